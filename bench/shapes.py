"""Models with the real architectures' shapes and random weights, built in memory for speed benchmarks.

Nothing is downloaded, so the weights are random and the text is noise: these measure time, not quality.

- `llava_15_7b`: LLaVA-1.5-7B's layout (CLIP ViT-L/14 at 336 px, 576 image tokens, a 2-layer MLP projector,
  a 32-layer 4096-wide Llama decoder) with the tests' word-level tokenizer, so the vocabulary (~300 words)
  and the LM head are smaller than LLaVA's 32k.
- `tiny_576`: the tiny test LLaVA's vision tower at 96 px (576 patches of 4 px: LLaVA-1.5's 576 image tokens) and
  a Llama decoder as wide and deep as the miniature world's (128 wide, 3 layers; 4 heads over 2 KV heads): the
  paper's prefix length at a size a CPU searches in seconds.
- `open_clip_arch`: any architecture bundled with open_clip (e.g. "ViT-L-14-336"), untrained.
"""

from __future__ import annotations

import torch

LLAVA_SHAPES = ("llava-1.5-7b", "tiny-576")


def llava_15_7b(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, num_layers: int = 32):
    """A `VLMAdapter` over a LLaVA-1.5-7B-shaped model; `num_layers` < 32 makes a shallower one for smoke runs."""
    from csr_core.adapters.vlm import VLMAdapter
    from csr_testing.tiny_models import build_llava

    model, processor = build_llava(
        vision={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                "projection_dim": 768, "hidden_act": "quick_gelu"},
        text={"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": num_layers,
              "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
              "rms_norm_eps": 1e-5},
        image_size=336, patch_size=14, device=device, dtype=dtype,
    )
    return VLMAdapter(model, processor, device=device)


def tiny_576(device: str = "cpu", dtype: torch.dtype | None = None, num_layers: int = 3):
    """A `VLMAdapter` over the tiny LLaVA with 576 image tokens and a world-sized decoder (`num_layers` deep)."""
    from csr_core.adapters.vlm import VLMAdapter
    from csr_testing.tiny_models import TINY_LLAVA_TEXT, TINY_LLAVA_VISION, build_llava

    text = {**TINY_LLAVA_TEXT, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": num_layers}
    model, processor = build_llava(TINY_LLAVA_VISION, text, image_size=96, patch_size=4, device=device, dtype=dtype)
    return VLMAdapter(model, processor, device=device)


def build_shape(name: str, device: str, dtype: torch.dtype, num_layers: int | None = None):
    """The `VLMAdapter` of shape `name` (one of LLAVA_SHAPES); `num_layers` None: the shape's own depth."""
    builder = {"llava-1.5-7b": llava_15_7b, "tiny-576": tiny_576}[name]
    return builder(device, dtype) if num_layers is None else builder(device, dtype, num_layers)


def open_clip_arch(name: str, device: str = "cuda"):
    """An `OpenClipRelevance` over open_clip's bundled architecture `name`, randomly initialised."""
    import open_clip

    from csr_core.adapters.relevance import OpenClipRelevance

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
    return OpenClipRelevance(model, preprocess, open_clip.get_tokenizer(name), device=device)
