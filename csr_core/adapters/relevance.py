"""Image relevance: raw cosine between an image's and a sentence's L2-normalised embeddings (no download).

- `OpenClipRelevance`: any open_clip model stored in open_clip's local-dir format.
- `HFClipRelevance`: a transformers `CLIPModel`, `SiglipModel` or `Siglip2Model` save_pretrained dir (the paper's
  code scores with openai/clip-vit-large-patch14-336 through transformers).
- `load_relevance_scorer` picks one by what the dir holds (`relevance_dirs.scorer_kind`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from csr_core.adapters.relevance_dirs import HF_CLIP, HF_SIGLIP, HF_SIGLIP2, OPEN_CLIP, scorer_kind

WEIGHTS_FILE = "open_clip_model.safetensors"  # the first name open_clip's local-dir loader looks for


class PairCosine:
    """`cosine` over a scorer's `encode_images` and `encode_texts` (both L2-normalised)."""

    def cosine(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        image_index: Sequence[int],
        batch_size: int = 256,
    ) -> list[float]:
        """Raw cos(image[image_index[i]], text[i]); each referenced image is encoded once."""
        if len(texts) != len(image_index):
            raise ValueError(f"{len(texts)} texts but {len(image_index)} image indices")
        if not texts:
            return []
        used = sorted({int(i) for i in image_index})
        image_features = self.encode_images([images[i] for i in used])
        row_of = {image: row for row, image in enumerate(used)}
        rows = torch.tensor([row_of[int(i)] for i in image_index], device=image_features.device)
        text_features = self.encode_texts(texts, batch_size=batch_size)
        return (image_features[rows] * text_features).sum(dim=-1).tolist()


def load_relevance_scorer(model_dir, *, device: str = "cpu") -> OpenClipRelevance | HFClipRelevance:
    """The scorer for what `model_dir` holds: `open_clip_config.json` → `OpenClipRelevance`; `config.json` with
    model_type clip, siglip or siglip2 → `HFClipRelevance`; anything else raises `UnknownScorerDirError`."""
    if scorer_kind(model_dir) == OPEN_CLIP:
        return OpenClipRelevance.from_pretrained(model_dir, device=device)
    return HFClipRelevance.from_pretrained(model_dir, device=device)


class OpenClipRelevance(PairCosine):
    kind = OPEN_CLIP

    def __init__(self, model, preprocess, tokenizer, *, device: str = "cpu", name: str = OPEN_CLIP):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer  # open_clip tokenizers truncate to the model's context length
        self.device = torch.device(device)
        self.name = name

    @classmethod
    def from_pretrained(cls, model_dir, *, device="cpu") -> OpenClipRelevance:
        """Load `model_dir/open_clip_model.safetensors` into the model `open_clip_config.json` describes.

        open_clip's local-dir loader takes whatever weights file it finds and, finding none, logs a warning and
        returns a randomly initialised model. Here the file must exist (open_clip then prefers it to any other
        in the dir), `require_pretrained` makes open_clip raise unless a checkpoint was actually loaded, and
        its strict load refuses one that lacks any of the model's tensors.
        """
        import open_clip

        weights = Path(model_dir) / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{model_dir}: no {WEIGHTS_FILE}; the open_clip model would be initialised "
                                    "randomly (csr loads safetensors only)")
        name = "local-dir:" + str(Path(model_dir))
        model, _, preprocess = open_clip.create_model_and_transforms(name, device=device, require_pretrained=True)
        return cls(model, preprocess, open_clip.get_tokenizer(name), device=device,
                   name=f"{OPEN_CLIP}:{Path(model_dir).name}")

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        features = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images[start : start + batch_size]])
            features.append(self.model.encode_image(pixels.to(self.device)).float())
        return torch.nn.functional.normalize(torch.cat(features), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        features = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            features.append(self.model.encode_text(tokens).float())
        return torch.nn.functional.normalize(torch.cat(features), dim=-1)


HF_MODEL_CLASSES = {HF_CLIP: "CLIPModel", HF_SIGLIP: "SiglipModel", HF_SIGLIP2: "Siglip2Model"}


class HFClipRelevance(PairCosine):
    """CLIP, SigLIP or SigLIP 2 from a transformers save_pretrained dir: `get_image_features` and
    `get_text_features`, L2-normalised, in float32.

    Images go through the dir's image processor as saved (called directly: a processor's class-level defaults,
    e.g. Siglip2Processor's patch_size 16, would override the image processor's own settings). Texts are truncated
    to the text model's `max_position_embeddings` (77 for CLIP, 64 for SigLIP). CLIP's causal text model pools at
    the EOS token, so texts are padded to the longest with the attention mask. SigLIP and SigLIP 2 pool the last
    position and were trained on ids padded to that full length with no attention mask (big_vision), so their
    texts are padded to `max_length` (what transformers documents for them) and only `input_ids` go in: padding
    side, pad token and lower-casing are the dir's tokenizer's.
    """

    def __init__(self, model, processor, *, kind: str, device: str = "cpu", name: str | None = None):
        self.model = model.eval()
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.kind = kind
        self.name = name or kind
        self.device = torch.device(device)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, model_dir, *, device="cpu") -> HFClipRelevance:
        """The processor (`AutoProcessor`) and the model class `config.json`'s model_type names, from safetensors
        weights only, never remote code; a checkpoint lacking any of the model's parameters is refused."""
        import transformers

        kind = scorer_kind(model_dir)
        if kind not in HF_MODEL_CLASSES:
            raise ValueError(f"{model_dir} is an open_clip local dir: load it with OpenClipRelevance or "
                             "load_relevance_scorer")
        model_dir = str(Path(model_dir))
        processor = transformers.AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)
        model_class = getattr(transformers, HF_MODEL_CLASSES[kind])
        model, info = model_class.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True,
                                                  output_loading_info=True)
        _refuse_missing(model_dir, info)
        return cls(model.to(device), processor, kind=kind, device=device, name=f"{kind}:{Path(model_dir).name}")

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        features = []
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start : start + batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt").to(self.device)
            features.append(self.model.get_image_features(**pixels).pooler_output.float())
        return torch.nn.functional.normalize(torch.cat(features), dim=-1)

    def text_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The tokenized batch the text model gets (see the class docstring)."""
        if self.kind == HF_CLIP:
            tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt")
            return {name: tokens[name] for name in ("input_ids", "attention_mask") if name in tokens}
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return {"input_ids": tokens["input_ids"]}

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        features = []
        for start in range(0, len(texts), batch_size):
            inputs = {k: v.to(self.device) for k, v in self.text_inputs(texts[start : start + batch_size]).items()}
            features.append(self.model.get_text_features(**inputs).pooler_output.float())
        return torch.nn.functional.normalize(torch.cat(features), dim=-1)


def _refuse_missing(model_dir: str, info: dict) -> None:
    from csr_core.adapters.vlm import MissingWeightsError

    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MissingWeightsError(f"{model_dir}: the weights lack {len(missing)} of the model's parameters "
                                  f"({shown}); they would be initialised randomly")
