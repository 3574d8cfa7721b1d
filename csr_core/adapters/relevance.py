"""Image relevance with any open_clip model stored in open_clip's local-dir format (no download)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

WEIGHTS_FILE = "open_clip_model.safetensors"  # the first name open_clip's local-dir loader looks for


class OpenClipRelevance:
    def __init__(self, model, preprocess, tokenizer, *, device: str = "cpu"):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer  # open_clip tokenizers truncate to the model's context length
        self.device = torch.device(device)

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
        return cls(model, preprocess, open_clip.get_tokenizer(name), device=device)

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
