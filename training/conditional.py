"""mDPO's image-conditional and anchor terms (Wang et al. 2024, arXiv 2406.11839) on top of TRL's DPO loss.

Plain DPO on a VLM can learn its preferences from the text alone and lean on the language prior. mDPO adds:
- a conditional preference: the chosen response must gain more likelihood (against the reference) with the
  real image than with a corrupted one, here a random crop that keeps at most `crop_keep` of the image's area;
- an anchor: the chosen response's own reward, log pi/pi_ref, is pushed above zero.
Both reuse DPO's beta. Their losses are -log sigmoid(beta * margin), averaged over the batch and weighted.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from PIL import Image
from trl import DPOTrainer

IMAGE_MARGIN_METRIC = "rewards/image_margins"


def crop_box(index: int, seed: int, max_keep: float) -> list[float]:
    """A square crop as (left, top, right, bottom) fractions of the image, keeping at most `max_keep` of its
    area; drawn from (seed, index) alone, so a resumed training corrupts every pair exactly as before."""
    rng = random.Random(seed * 1_000_003 + index)
    side = math.sqrt(rng.uniform(0.25, 1.0) * max_keep)
    left, top = rng.uniform(0.0, 1.0 - side), rng.uniform(0.0, 1.0 - side)
    return [left, top, left + side, top + side]


def apply_crop(image: Image.Image, box: list[float]) -> Image.Image:
    """The cropped region at the image's size (the processor would resize it anyway)."""
    width, height = image.size
    left, top = int(box[0] * width), int(box[1] * height)
    right, bottom = max(left + 1, round(box[2] * width)), max(top + 1, round(box[3] * height))
    return image.crop((left, top, right, bottom)).resize(image.size)


class CorruptedImageCollator:
    """Wraps TRL's vision preference collator: adds `corrupted_pixel_values`, the pixels of each row's cropped
    image, for the chosen half of the batch."""

    def __init__(self, collator: Callable, image_processor):
        self.collator = collator
        self.image_processor = image_processor

    def __call__(self, examples: list[dict]) -> dict:
        crops = [apply_crop(_first_image(ex), ex.pop("crop_box")) for ex in examples]
        batch = self.collator(examples)
        unsupported = set(batch) - {"input_ids", "attention_mask", "completion_mask", "pixel_values"}
        if unsupported:
            raise ValueError(f"dpo.image_condition_weight: supports models whose images are one pixel_values "
                             f"tensor (LLaVA-1.5), this processor also gives {sorted(unsupported)}")
        batch["corrupted_pixel_values"] = self.image_processor(images=crops, return_tensors="pt")["pixel_values"]
        return batch


def _first_image(example: dict) -> Image.Image:
    images = example.get("images") or [example["image"]]
    if len(images) != 1:
        raise ValueError(f"dpo.image_condition_weight: needs one image per pair, got {len(images)}")
    return images[0]


class ImageConditionedDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer plus mDPO's conditional and anchor terms (weights 0 turn either off)."""

    def __init__(self, *args, condition_weight: float, anchor_weight: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.condition_weight = condition_weight
        self.anchor_weight = anchor_weight
        self.data_collator = CorruptedImageCollator(self.data_collator, self.processing_class.image_processor)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        corrupted = inputs.pop("corrupted_pixel_values")
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        real, cropped = self._chosen_rewards(model, inputs, corrupted)
        condition = -F.logsigmoid(self.beta * (real - cropped)).mean()
        anchor = -F.logsigmoid(self.beta * real).mean()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][IMAGE_MARGIN_METRIC].append(self.beta * (real - cropped).detach().mean().item())
        extra = self.condition_weight * condition + self.anchor_weight * anchor
        if return_outputs:
            return loss[0] + extra, loss[1]
        return loss + extra

    def _chosen_rewards(self, model, inputs, corrupted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi - log pi_ref of each chosen response, given the real image and given the corrupted one."""
        n = inputs["input_ids"].size(0) // 2  # the batch is [chosen, rejected]
        twice = lambda t: torch.cat([t[:n], t[:n]])  # noqa: E731
        pixels = inputs["pixel_values"]
        batch = {
            "input_ids": twice(inputs["input_ids"]),
            "attention_mask": twice(inputs["attention_mask"]),
            "pixel_values": torch.cat([pixels[:n], corrupted.to(pixels)]),
        }
        completion = twice(inputs["completion_mask"])
        policy = _sequence_logps(model, batch, completion)
        with torch.no_grad(), self._reference_model(model) as reference:
            ref = _sequence_logps(reference, batch, completion)
        return (policy - ref).chunk(2)

    @contextlib.contextmanager
    def _reference_model(self, model):
        """The frozen reference: TRL's ref_model, or the policy with its LoRA adapter switched off."""
        if self.ref_model is not None:
            yield self.ref_model
        elif is_peft_model(self.model):
            with self.accelerator.unwrap_model(self.model).disable_adapter():
                yield model
        else:
            raise ValueError("dpo.image_condition_weight: needs a reference model or a LoRA adapter to disable")


def _sequence_logps(model, batch: dict, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the completion tokens' log-probabilities, computed as TRL's DPO loss computes them."""
    labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
    out = model(**batch, labels=labels, use_cache=False, fused_lm_head=True)
    shift_mask = completion_mask[:, 1:]
    return (out.log_probs[:, -shift_mask.size(1):] * shift_mask).sum(dim=1)
