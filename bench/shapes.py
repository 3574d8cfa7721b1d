"""Models with the real architectures' shapes and random weights, built in memory for speed benchmarks.

Nothing is downloaded, so the weights are random and the text is noise: these measure time, not quality.

- `llava_15_7b`: LLaVA-1.5-7B's layout (CLIP ViT-L/14 at 336 px, 576 image tokens, a 2-layer MLP projector,
  a 32-layer 4096-wide Llama decoder) with the tests' word-level tokenizer, so the vocabulary (~300 words)
  and the LM head are smaller than LLaVA's 32k.
- `open_clip_arch`: any architecture bundled with open_clip (e.g. "ViT-L-14-336"), untrained.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

LLAVA_SHAPES = ("llava-1.5-7b",)


def llava_15_7b(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, num_layers: int = 32):
    """A `LlavaAdapter` over a LLaVA-1.5-7B-shaped model; `num_layers` < 32 makes a shallower one for smoke runs."""
    from tiny_models import DOT_LOGIT_SCALE, LLAVA_CHAT_TEMPLATE, SPECIAL_TOKENS, _make_tokenizer
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from csr_core.adapters.vlm import LlavaAdapter

    tokenizer = _make_tokenizer()
    vocab = tokenizer.get_vocab()
    ids = {name: vocab[name] for name in SPECIAL_TOKENS}
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=len(vocab), hidden_size=4096, intermediate_size=11008, num_hidden_layers=num_layers,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                       pad_token_id=ids["<pad>"], tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                         image_seq_length=576, vision_feature_select_strategy="default", vision_feature_layer=-2,
                         projector_hidden_act="gelu")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype).eval()
    with torch.no_grad():  # as in the tiny model: a larger "." row so that sentences end now and then
        model.lm_head.weight[vocab["."]] *= DOT_LOGIT_SCALE
    model.generation_config.bos_token_id = ids["<s>"]
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.pad_token_id = ids["<pad>"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                               image_token="<image>", num_additional_image_tokens=1)
    return LlavaAdapter(model, processor, device=device)


def open_clip_arch(name: str, device: str = "cuda"):
    """An `OpenClipRelevance` over open_clip's bundled architecture `name`, randomly initialised."""
    import open_clip

    from csr_core.adapters.relevance import OpenClipRelevance

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
    return OpenClipRelevance(model, preprocess, open_clip.get_tokenizer(name), device=device)
