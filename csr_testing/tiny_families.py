"""Tiny vision-language models of several transformers families, built from config, for tests. Nothing is downloaded.

`build_tiny_vlm(family)` returns a model (random weights, fp32, eval mode) and its processor; `make_tiny_vlm(family,
out_dir)` saves both, so that `AutoProcessor` and `AutoModelForImageTextToText.from_pretrained(out_dir)` load them.
`family` is a transformers `config.model_type`; "llava" is `tiny_models.make_tiny_llava`.

Every family uses the word-level tokenizer of `tiny_models` (a word has the same id in every family) plus the family's
own special tokens, never split, and the role words "system" and "model"; llava and llava_next keep the tiny LLaVA
tokenizer as it is. Chat templates are simplified copies of the real ones (Qwen2/2.5-VL's default system turn is left
out, as Qwen3-VL's template does). Each text model has 2 layers of width 32, initializer_range 0.2 and a "." row of
lm_head scaled by DOT_LOGIT_SCALE, as the tiny LLaVA. The image processors are shrunk but keep the family's
resolution scheme, with at most about 40 image tokens per image:

- qwen2_vl, qwen2_5_vl, qwen3_vl: dynamic resolution, 4-pixel patches merged 2x2 (one token per 8x8 pixels), between
  256 and 2560 pixels per image.
- llava_next (CLIP + Llama, the llava-v1.6-vicuna layout), llava_onevision (SigLIP + Qwen2): anyres with 8-pixel
  tiles of 4-pixel patches on small `image_grid_pinpoints`.
- idefics3, smolvlm: image splitting into 16-pixel crops (up to 2x2 plus the global image), 4 tokens per crop.
- gemma3: fixed 32-pixel images pooled to 16 tokens, no pan-and-scan. Its lm_head is untied from the embeddings
  (the real model ties them) so that scaling "." leaves the input embedding alone; its sliding window (512) is larger
  than any test sequence.
"""

from __future__ import annotations

from pathlib import Path

import torch

from csr_testing.tiny_models import (
    DOT_LOGIT_SCALE,
    LLAVA_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TINY_LLAVA_TEXT,
    TINY_LLAVA_VISION,
    _make_tokenizer,
    build_llava,
    make_tiny_llava,
)
from csr_testing.tiny_models import IMAGE_SIZE as LLAVA_IMAGE_SIZE
from csr_testing.tiny_models import PATCH_SIZE as LLAVA_PATCH_SIZE

FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "idefics3",
            "smolvlm")

TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "max_position_embeddings": 2048, "initializer_range": 0.2}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
HALF = [0.5, 0.5, 0.5]
ROLE_WORDS = ("system", "model")  # chat-template role names that are not tiny_models words

QWEN_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>")
QWEN_PATCH, QWEN_MERGE = 4, 2
QWEN_SIZE = {"shortest_edge": 256, "longest_edge": 2560}  # pixels: 4 to 40 tokens
QWEN_MROPE_SECTION = [4, 2, 2]  # rotary frequencies for time, height, width: the 8 of a 16-wide head

GEMMA_TOKENS = ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>")
GEMMA_IMAGE_SIZE, GEMMA_PATCH, GEMMA_IMAGE_TOKENS = 32, 4, 16
GEMMA_SLIDING_WINDOW = 512

ANYRES_TILE, ANYRES_PATCH = 8, 4
ANYRES_PINPOINTS = [[8, 16], [16, 8], [16, 16], [8, 24], [24, 8]]
ONEVISION_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")

IDEFICS_ROW_COL = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))
IDEFICS_IMAGE_TOKENS = ("<fake_token_around_image>", "<image>", "<global-img>", *IDEFICS_ROW_COL, "<end_of_utterance>")
IDEFICS_CROP, IDEFICS_PATCH, IDEFICS_LONGEST_EDGE = 16, 4, 32  # up to 2x2 crops of 16 pixels, + the global image
IDEFICS_SEQ_LEN = (IDEFICS_CROP // IDEFICS_PATCH) ** 2 // 4  # pixel shuffle with scale_factor 2

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA_CHAT_TEMPLATE = (  # a system message opens the first user turn, as in Gemma 3's template
    "{{ '<bos>' }}"
    "{% set prefix = '' %}{% set turns = messages %}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}"
    "{% set prefix = (system if system is string else system[0]['text']) + '\n\n' %}"
    "{% set turns = messages[1:] %}"
    "{% endif %}"
    "{% for message in turns %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{% if loop.first %}{{ prefix }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
IDEFICS_CHAT_TEMPLATE = (  # Idefics3's template; SmolVLM's starts with <|im_start|> instead of <|begin_of_text|>
    "{{ bos_text }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}"
    "{{ '<end_of_utterance>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_tiny_vlm(family: str, seed: int = 0):
    """A tiny `family` model (random weights from `seed`, fp32, eval mode) and its processor."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    return _BUILDERS[family](seed)


def make_tiny_vlm(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny `family` model + processor into `out_dir`; return the path."""
    if family == "llava":
        return make_tiny_llava(out_dir, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_vlm(family, seed=seed)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _build_llava(seed: int):
    return build_llava(TINY_LLAVA_VISION, TINY_LLAVA_TEXT, image_size=LLAVA_IMAGE_SIZE, patch_size=LLAVA_PATCH_SIZE,
                       seed=seed)


def _tokenizer(family_tokens: tuple[str, ...], **named_tokens):
    """The tiny_models tokenizer with its own and the family's special tokens (all unsplittable) and the role words."""
    return _make_tokenizer(tuple(dict.fromkeys([*SPECIAL_TOKENS, *family_tokens])), ROLE_WORDS, **named_tokens)


def _ids(tokenizer, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(tok) for tok in tokens]


def _text_config(tokenizer, *, bos: str | None, eos: str, pad: str, **fields) -> dict:
    vocab = tokenizer.get_vocab()
    return {**TEXT, "vocab_size": len(vocab), "bos_token_id": vocab.get(bos), "eos_token_id": vocab[eos],
            "pad_token_id": vocab[pad], **fields}


def _instantiate(model_class, config, tokenizer, seed: int, *, bos: str | None, eos: tuple[str, ...], pad: str):
    """The model in eval mode, with a larger "." row of lm_head and the family's generation ids."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():  # a larger "." row makes sentences end often enough for multi-level trees
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(".")] *= DOT_LOGIT_SCALE
    eos_ids = _ids(tokenizer, *eos)
    generation_config = model.generation_config
    generation_config.bos_token_id = None if bos is None else tokenizer.convert_tokens_to_ids(bos)
    generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    generation_config.pad_token_id = tokenizer.convert_tokens_to_ids(pad)
    return model


def _build_qwen(family: str, seed: int):
    """Qwen2-VL, Qwen2.5-VL or Qwen3-VL: dynamic resolution, M-RoPE, `<|image_pad|>` repeated per merged patch."""
    from transformers import Qwen2VLImageProcessor

    tokenizer = _tokenizer(
        QWEN_TOKENS, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    )
    image_id, video_id, start_id, end_id = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                "<|vision_end|>")
    ids = {"image_token_id": image_id, "video_token_id": video_id, "vision_start_token_id": start_id,
           "vision_end_token_id": end_id, "tie_word_embeddings": False}
    text = _text_config(tokenizer, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>",
                        tie_word_embeddings=False)
    patches = {"patch_size": QWEN_PATCH, "spatial_merge_size": QWEN_MERGE, "temporal_patch_size": 2}
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model
        from transformers import Qwen2VLProcessor as Processor
        from transformers import Qwen2VLVideoProcessor as VideoProcessor

        vision = {"depth": 2, "embed_dim": 32, "hidden_size": TEXT["hidden_size"], "mlp_ratio": 2, "num_heads": 2,
                  **patches}
        rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": QWEN_MROPE_SECTION}
        mean_std = {}
    elif family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLForConditionalGeneration as Model
        from transformers import Qwen2_5_VLProcessor as Processor
        from transformers import Qwen2VLVideoProcessor as VideoProcessor

        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                  "out_hidden_size": TEXT["hidden_size"], "window_size": 16, "fullatt_block_indexes": [1],
                  **patches}  # windows of 2x2 merged patches in layer 0, full attention in layer 1
        rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": QWEN_MROPE_SECTION}
        mean_std = {}
    else:
        from transformers import Qwen3VLConfig as Config
        from transformers import Qwen3VLForConditionalGeneration as Model
        from transformers import Qwen3VLProcessor as Processor
        from transformers import Qwen3VLVideoProcessor as VideoProcessor

        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                  "out_hidden_size": TEXT["hidden_size"], "num_position_embeddings": 64,
                  "deepstack_visual_indexes": [0], **patches}
        rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": QWEN_MROPE_SECTION,
                "mrope_interleaved": True}
        text["head_dim"] = TEXT["hidden_size"] // TEXT["num_attention_heads"]
        mean_std = {"image_mean": HALF, "image_std": HALF}
    config = Config(text_config={**text, "rope_parameters": rope}, vision_config=vision, **ids)
    model = _instantiate(Model, config, tokenizer, seed, bos="<|endoftext|>", eos=("<|im_end|>", "<|endoftext|>"),
                         pad="<|endoftext|>")
    merge = {"patch_size": QWEN_PATCH, "merge_size": QWEN_MERGE, "temporal_patch_size": 2, "size": QWEN_SIZE,
             **mean_std}
    processor = Processor(image_processor=Qwen2VLImageProcessor(**merge), tokenizer=tokenizer,
                          video_processor=VideoProcessor(**merge), chat_template=QWEN_CHAT_TEMPLATE)
    return model, processor


def _build_gemma3(seed: int):
    """Gemma 3: a SigLIP tower pooled to a fixed number of `<image_soft_token>`s between `<start_of_image>` and
    `<end_of_image>`; a bidirectional mask over each image (from `token_type_ids`)."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    tokenizer = _tokenizer(
        GEMMA_TOKENS, bos_token="<bos>", eos_token="<end_of_turn>", pad_token="<pad>",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"},
    )
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = Gemma3TextConfig(**_text_config(
        tokenizer, bos="<bos>", eos="<end_of_turn>", pad="<pad>", head_dim=head_dim, query_pre_attn_scalar=head_dim,
        sliding_window=GEMMA_SLIDING_WINDOW, layer_types=["sliding_attention", "full_attention"],
        tie_word_embeddings=False,
    ))
    vision = SiglipVisionConfig(**VISION, image_size=GEMMA_IMAGE_SIZE, patch_size=GEMMA_PATCH, vision_use_head=False)
    boi, eoi, image = _ids(tokenizer, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=GEMMA_IMAGE_TOKENS,
                          boi_token_index=boi, eoi_token_index=eoi, image_token_index=image,
                          initializer_range=TEXT["initializer_range"], tie_word_embeddings=False)
    model = _instantiate(Gemma3ForConditionalGeneration, config, tokenizer, seed, bos="<bos>",
                         eos=("<eos>", "<end_of_turn>"), pad="<pad>")
    image_processor = Gemma3ImageProcessor(size={"height": GEMMA_IMAGE_SIZE, "width": GEMMA_IMAGE_SIZE},
                                           image_mean=HALF, image_std=HALF, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=GEMMA_CHAT_TEMPLATE, image_seq_length=GEMMA_IMAGE_TOKENS)
    return model, processor


def _build_llava_next(seed: int):
    """LLaVA-NeXT (llava-v1.6-vicuna layout): CLIP + Llama, anyres tiles plus a base image, `<image>` repeated."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = _make_tokenizer()
    vision = CLIPVisionConfig(**VISION, image_size=ANYRES_TILE, patch_size=ANYRES_PATCH, projection_dim=32)
    text = LlamaConfig(**_text_config(tokenizer, bos="<s>", eos="</s>", pad="<pad>", tie_word_embeddings=False))
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=_ids(tokenizer, "<image>")[0],
                             image_grid_pinpoints=ANYRES_PINPOINTS, vision_feature_select_strategy="default",
                             vision_feature_layer=-2, image_seq_length=(ANYRES_TILE // ANYRES_PATCH) ** 2,
                             tie_word_embeddings=False)
    model = _instantiate(LlavaNextForConditionalGeneration, config, tokenizer, seed, bos="<s>", eos=("</s>",),
                         pad="<pad>")
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": ANYRES_TILE},
                                              crop_size={"height": ANYRES_TILE, "width": ANYRES_TILE},
                                              image_grid_pinpoints=ANYRES_PINPOINTS)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=ANYRES_PATCH,
                                   vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                                   image_token="<image>", num_additional_image_tokens=1)
    return model, processor


def _build_llava_onevision(seed: int):
    """LLaVA-OneVision: SigLIP + Qwen2, anyres tiles plus a base image (anyres_max_9), `<image>` repeated."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = _tokenizer(ONEVISION_TOKENS, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                           extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})
    vision = SiglipVisionConfig(**VISION, image_size=ANYRES_TILE, patch_size=ANYRES_PATCH, vision_use_head=False)
    text = Qwen2Config(**_text_config(tokenizer, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                                      tie_word_embeddings=False))
    image_id, video_id = _ids(tokenizer, "<image>", "<video>")
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                                  video_token_index=video_id, image_grid_pinpoints=ANYRES_PINPOINTS,
                                  vision_feature_select_strategy="full", vision_feature_layer=-1,
                                  vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False)
    model = _instantiate(LlavaOnevisionForConditionalGeneration, config, tokenizer, seed, bos=None,
                         eos=("<|im_end|>", "<|endoftext|>"), pad="<|endoftext|>")
    size = {"height": ANYRES_TILE, "width": ANYRES_TILE}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=ANYRES_PINPOINTS,
                                                     image_mean=HALF, image_std=HALF),
        tokenizer=tokenizer, video_processor=LlavaOnevisionVideoProcessor(size=size, image_mean=HALF, image_std=HALF),
        num_image_tokens=(ANYRES_TILE // ANYRES_PATCH) ** 2, vision_feature_select_strategy="full",
        chat_template=ONEVISION_CHAT_TEMPLATE, image_token="<image>", video_token="<video>",
        vision_aspect_ratio="anyres_max_9",
    )
    return model, processor


def _build_idefics3_like(family: str, seed: int):
    """Idefics3 or SmolVLM: SigLIP-like tower, pixel shuffle, image splitting into crops tagged `<row_i_col_j>`."""
    from transformers import LlamaConfig

    if family == "idefics3":
        from transformers import Idefics3Config as Config
        from transformers import Idefics3ForConditionalGeneration as Model
        from transformers import Idefics3ImageProcessor as ImageProcessor
        from transformers import Idefics3VisionConfig as VisionConfig

        bos, pad, own = "<|begin_of_text|>", "<pad>", ("<|begin_of_text|>", "<|end_of_text|>")
    else:
        from transformers import SmolVLMConfig as Config
        from transformers import SmolVLMForConditionalGeneration as Model
        from transformers import SmolVLMImageProcessor as ImageProcessor
        from transformers import SmolVLMVisionConfig as VisionConfig

        bos, pad, own = "<|im_start|>", "<|im_end|>", ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    tokenizer = _tokenizer((*own, *IDEFICS_IMAGE_TOKENS), bos_token=bos, eos_token="<end_of_utterance>",
                           pad_token=pad, extra_special_tokens={"image_token": "<image>"})
    vision = VisionConfig(**VISION, image_size=IDEFICS_CROP, patch_size=IDEFICS_PATCH)
    text = LlamaConfig(**_text_config(tokenizer, bos=bos, eos="<end_of_utterance>", pad=pad,
                                      tie_word_embeddings=False))
    config = Config(vision_config=vision, text_config=text, image_token_id=_ids(tokenizer, "<image>")[0],
                    scale_factor=2, tie_word_embeddings=False)
    model = _instantiate(Model, config, tokenizer, seed, bos=bos, eos=("<end_of_utterance>",), pad=pad)
    sizes = {"size": {"longest_edge": IDEFICS_LONGEST_EDGE}, "max_image_size": {"longest_edge": IDEFICS_CROP},
             "do_image_splitting": True}
    template = IDEFICS_CHAT_TEMPLATE.replace("{{ bos_text }}", bos)
    if family == "idefics3":
        from transformers import Idefics3Processor

        processor = Idefics3Processor(image_processor=ImageProcessor(**sizes), tokenizer=tokenizer,
                                      image_seq_len=IDEFICS_SEQ_LEN, chat_template=template)
    else:
        from transformers import SmolVLMProcessor, SmolVLMVideoProcessor

        processor = SmolVLMProcessor(image_processor=ImageProcessor(**sizes), tokenizer=tokenizer,
                                     video_processor=SmolVLMVideoProcessor(**sizes), image_seq_len=IDEFICS_SEQ_LEN,
                                     chat_template=template)
    return model, processor


_BUILDERS = {
    "llava": _build_llava,
    "llava_next": _build_llava_next,
    "llava_onevision": _build_llava_onevision,
    "qwen2_vl": lambda seed: _build_qwen("qwen2_vl", seed),
    "qwen2_5_vl": lambda seed: _build_qwen("qwen2_5_vl", seed),
    "qwen3_vl": lambda seed: _build_qwen("qwen3_vl", seed),
    "gemma3": _build_gemma3,
    "idefics3": lambda seed: _build_idefics3_like("idefics3", seed),
    "smolvlm": lambda seed: _build_idefics3_like("smolvlm", seed),
}
