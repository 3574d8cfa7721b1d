"""Tiny models built from config, for tests and benchmarks. Nothing is downloaded.

- `make_tiny_llava`: a LLaVA-1.5-layout model (CLIP vision tower + Llama text model), a word-level
  tokenizer, a CLIP image processor and a `LlavaProcessor` with the LLaVA-1.5 chat template.
- `make_tiny_clip`: a tiny open_clip model in open_clip's local-dir format.
- `make_tiny_hf_clip`, `make_tiny_siglip`: tiny transformers CLIP, SigLIP and SigLIP 2 scorers
  (save_pretrained dirs with their processors and offline tokenizers).

Weights are random; the models only have to run, not to be good.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

IMAGE_SIZE = 16
PATCH_SIZE = 4
DOT_LOGIT_SCALE = 2.0
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")

_WORDS = """
. , : ? ! ' user assistant the a an is are was were there this that it its of in on at to with and or but
image picture photo scene shows show see seen can be has have some one two three four five many several
no yes not also near next behind front left right top bottom side middle background foreground
person man woman people child boy girl dog cat horse bird cow sheep elephant bear zebra giraffe
car bus truck bicycle motorcycle train boat airplane traffic light sign bench chair couch bed table
cup bottle bowl fork knife spoon plate pizza cake banana apple orange sandwich donut broccoli carrot
laptop keyboard phone book clock vase tv remote umbrella bag kite ball frisbee skateboard surfboard
red green blue yellow white black brown gray pink purple orange large small big little tall short
sitting standing walking running holding eating playing lying parked flying looking wearing riding
street road grass field water sky tree building room kitchen wall window door floor snow beach
describe detail detailed what how where who which does do please answer question
""".split()


def _vocab(added_tokens: tuple[str, ...] = ()) -> dict[str, int]:
    """Special tokens, then the words, then `added_tokens` not already there (so word ids never move)."""
    tokens = dict.fromkeys([*SPECIAL_TOKENS, *_WORDS, *added_tokens])
    return {tok: i for i, tok in enumerate(tokens)}


LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _make_tokenizer(added_tokens: tuple[str, ...] = (), added_words: tuple[str, ...] = (), **named_tokens):
    """The word-level tokenizer (lowercases, splits on whitespace and punctuation).

    `added_tokens` join the vocabulary as special tokens that are never split, `added_words` as plain words;
    `named_tokens` replace the LLaVA-1.5 defaults for `bos_token`, `eos_token`, `pad_token`, `unk_token` and
    `extra_special_tokens`.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=_vocab((*added_words, *added_tokens)), unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, glues "."
    if added_tokens:
        backend.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in added_tokens])
    names = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
             "extra_special_tokens": {"image_token": "<image>"}}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, **(names | named_tokens), padding_side="left", add_bos_token=False,
    )
    return tokenizer


TINY_LLAVA_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "projection_dim": 32}
TINY_LLAVA_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "max_position_embeddings": 2048,
                   "initializer_range": 0.2}  # peaked enough that "." and eos get picked


def make_tiny_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny LLaVA-1.5-layout model + processor into `out_dir`; return the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, processor = build_llava(TINY_LLAVA_VISION, TINY_LLAVA_TEXT, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                                   seed=seed)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_llava(vision: dict, text: dict, *, image_size: int, patch_size: int, seed: int = 0,
                device: str = "cpu", dtype: torch.dtype | None = None):
    """A LLaVA-1.5-layout model (random weights, on `device`) and its processor, with the word-level tokenizer.

    `vision` and `text` are CLIPVisionConfig and LlamaConfig fields; the vocabulary and special ids are set here.
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _make_tokenizer()
    vocab = tokenizer.get_vocab()
    ids = {name: vocab[name] for name in SPECIAL_TOKENS}
    vision_config = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, **vision)
    text_config = LlamaConfig(
        vocab_size=len(vocab), bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
        tie_word_embeddings=False, **text,
    )
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=ids["<image>"],
        image_seq_length=(image_size // patch_size) ** 2, vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).eval()
    if dtype is not None:
        model = model.to(dtype)
    with torch.no_grad():  # a larger "." row makes sentences end often enough for multi-level trees
        model.lm_head.weight[vocab["."]] *= DOT_LOGIT_SCALE
    generation_config = model.generation_config
    generation_config.bos_token_id = ids["<s>"]
    generation_config.eos_token_id = ids["</s>"]
    generation_config.pad_token_id = ids["<pad>"]

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
        image_token="<image>", num_additional_image_tokens=1,
    )
    return model, processor


TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def make_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny open_clip model in local-dir format; load with "local-dir:" + out_dir."""
    import open_clip
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out_dir / "open_clip_model.safetensors")
    preprocess_cfg = {
        "size": TINY_CLIP_CFG["vision_cfg"]["image_size"],
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    config = {"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": preprocess_cfg}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


# --- transformers CLIP / SigLIP scorer dirs ------------------------------------------------------------------
TINY_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
SIGLIP_TEXT_LENGTH = 64  # SigLIP's and SigLIP 2's training text length


def make_tiny_hf_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny transformers `CLIPModel` + `CLIPProcessor` (a byte-level BPE `CLIPTokenizer` over the
    256 byte symbols, no merges; 32-pixel images, 77-token texts) into `out_dir`; return the path."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(symbols + [s + "</w>" for s in symbols]
                                                 + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    config = CLIPConfig(
        text_config={**TINY_TOWER, "vocab_size": len(vocab), "max_position_embeddings": 77,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={**TINY_TOWER, "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return _save_scorer(out_dir, CLIPModel, config, CLIPProcessor(image_processor=image_processor,
                                                                  tokenizer=tokenizer), seed)


def make_tiny_siglip(out_dir: str | Path, seed: int = 0, *, model_type: str = "siglip") -> Path:
    """Build and save a tiny transformers SigLIP scorer into `out_dir`; return the path.

    `model_type="siglip"`: a `SiglipModel` (32-pixel images) with a lower-casing word-level tokenizer that appends
    `</s>` and pads with it, as SigLIP's does (SiglipTokenizer itself needs sentencepiece, which csr does not
    install). `"siglip2"`: a NaFlex `Siglip2Model` (8-pixel patches, at most 16 per image) with a `Siglip2Tokenizer`
    (lower-casing byte-fallback BPE over single characters) that appends `<eos>`. Both pad on the right to 64.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    if model_type == "siglip":
        from transformers import (
            PreTrainedTokenizerFast,
            SiglipConfig,
            SiglipImageProcessor,
            SiglipModel,
            SiglipProcessor,
        )

        words = ["<pad>", "</s>", "<unk>", *dict.fromkeys(_WORDS)]
        backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        backend.normalizer = normalizers.Lowercase()
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="</s>",
                                            unk_token="<unk>", model_max_length=SIGLIP_TEXT_LENGTH,
                                            padding_side="right")
        config = SiglipConfig(
            text_config={**TINY_TOWER, "vocab_size": len(words), "max_position_embeddings": SIGLIP_TEXT_LENGTH,
                         "projection_size": 32, "pad_token_id": 1, "eos_token_id": 1, "bos_token_id": None},
            vision_config={**TINY_TOWER, "image_size": 32, "patch_size": 8},
        )
        processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                                    tokenizer=tokenizer)
        return _save_scorer(out_dir, SiglipModel, config, processor, seed)
    if model_type != "siglip2":
        raise ValueError(f"model_type must be siglip or siglip2, not {model_type!r}")
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor, Siglip2Tokenizer

    symbols = (["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
               + list("▁abcdefghijklmnopqrstuvwxyz0123456789.,'"))
    tokenizer = Siglip2Tokenizer(vocab={s: i for i, s in enumerate(symbols)}, merges=[],
                                 model_max_length=SIGLIP_TEXT_LENGTH, padding_side="right")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <eos>", special_tokens=[("<eos>", tokenizer.eos_token_id)])
    config = Siglip2Config(
        text_config={**TINY_TOWER, "vocab_size": len(symbols), "max_position_embeddings": SIGLIP_TEXT_LENGTH,
                     "projection_size": 32, "pad_token_id": tokenizer.pad_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id},
        vision_config={**TINY_TOWER, "patch_size": 8, "num_patches": 16},
    )
    processor = Siglip2Processor(image_processor=Siglip2ImageProcessor(patch_size=8, max_num_patches=16),
                                 tokenizer=tokenizer)
    return _save_scorer(out_dir, Siglip2Model, config, processor, seed)


def _save_scorer(out_dir: str | Path, model_class, config, processor, seed: int) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model_class(config).eval().save_pretrained(out_dir)  # model.safetensors
    processor.save_pretrained(out_dir)
    return out_dir
