"""The world's base VLM: a LLaVA-architecture model sized for CPU, trained in two stages.

1. Vision pretraining: the CLIP-style vision tower learns to name the object and
   colour in each grid cell (a head over the cell's pooled patch features) and, on its
   CLS token, which objects the image holds. Without it a from-scratch model learns
   colours but not shapes in a CPU budget.
2. SFT: with the tower frozen (its features computed once), the projector and the
   Llama decoder learn the corpus; loss on answer tokens only, plus answer probes (below).

Answer probes. "Is there a mug in the image?" is balanced: half the answers are "Yes.".
So the answer is a pure conjunction of the question's object and the image's objects,
with no first-order signal in either alone. Plain SFT learns to ignore both and sits at
a constant answer (POPE 50%) for the whole budget. Two linear probes on the hidden state
that predicts the answer (after decoder layer ``llm_layers - 1``) keep both facts there:
one predicts which objects the image holds, one predicts which object the question names
(weight ``answer_probe_weight``). With both facts at hand the last layer learns the
conjunction within a few hundred steps. The probes are dropped after training; the saved
model is a plain LLaVA.

The result is saved with ``save_pretrained`` (model + processor, safetensors), so it
loads exactly like ``llava-hf/llava-1.5-7b-hf``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from .config import WorldConfig
from .corpus import Example
from .scenes import Scene
from .tokenizer import CHAT_TEMPLATE, build_tokenizer
from .training import Images, Progress, cell_targets, pool_cells, warmup_cosine_lr
from .vocab import COLORS, OBJECTS

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
VISION_FEATURE_LAYER = -1
# "full" keeps the CLS token as an image token. Pretrained to say which objects are present, it
# gives the decoder one place to look up "is there a mug?"; without it yes/no stays at chance.
FEATURE_STRATEGY = "full"


def build_processor(cfg: WorldConfig) -> LlavaProcessor:
    size = cfg.image_size
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD),
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(), patch_size=cfg.patch_size,
        vision_feature_select_strategy=FEATURE_STRATEGY, num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )


def n_image_tokens(cfg: WorldConfig) -> int:
    """Image tokens per image in the prompt: one per patch, plus CLS (strategy "full")."""
    return (cfg.image_size // cfg.patch_size) ** 2 + 1


def build_model(cfg: WorldConfig, processor: LlavaProcessor) -> LlavaForConditionalGeneration:
    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.llm_hidden, intermediate_size=3 * cfg.llm_hidden,
        num_hidden_layers=cfg.llm_layers, num_attention_heads=cfg.llm_heads, num_key_value_heads=cfg.llm_heads,
        max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
        vision_feature_layer=VISION_FEATURE_LAYER, vision_feature_select_strategy=FEATURE_STRATEGY,
        image_seq_length=n_image_tokens(cfg),
    )
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def train_base_vlm(train_scenes: Sequence[Scene], images: Images, corpus: Sequence[Example],
                   cfg: WorldConfig, out_dir: Path, *, progress: Progress = None) -> dict:
    """Build, pretrain the vision tower, fine-tune on the corpus, save to ``out_dir``."""
    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    processor = build_processor(cfg)
    model = build_model(cfg, processor)
    pixels = pixel_values(processor, train_scenes, images)
    vision_stats = pretrain_vision(model, pixels, train_scenes, cfg, progress)
    vision_seconds = time.perf_counter() - start
    features = vision_features(model, pixels)
    index = {scene.scene_id: i for i, scene in enumerate(train_scenes)}
    _, _, present = cell_targets(train_scenes, cfg)
    sft_stats = supervised_finetune(model, processor, features, index, corpus, cfg, progress, present=present)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return {**vision_stats, **sft_stats, "vision_seconds": vision_seconds,
            "seconds": time.perf_counter() - start, "parameters": sum(p.numel() for p in model.parameters())}


def pixel_values(processor: LlavaProcessor, scenes: Sequence[Scene], images: Images) -> torch.Tensor:
    batch = [images(scene) if callable(images) else images[scene.scene_id] for scene in scenes]
    return processor.image_processor(batch, return_tensors="pt")["pixel_values"]


# ---- stage 1: vision tower pretraining on cell classification ----------------------------------



def _image_features(model: LlavaForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    """What the projector sees: the chosen layer's hidden states, CLS first (strategy "full")."""
    out = model.model.vision_tower(pixels, output_hidden_states=True)
    return out.hidden_states[VISION_FEATURE_LAYER]




def pretrain_vision(model: LlavaForConditionalGeneration, pixels: torch.Tensor, scenes: Sequence[Scene],
                    cfg: WorldConfig, progress: Progress = None) -> dict:
    names, colors, present = cell_targets(scenes, cfg)
    d = cfg.vision_hidden
    heads = torch.nn.ModuleDict({"name": torch.nn.Linear(d, len(OBJECTS) + 1), "color": torch.nn.Linear(d, len(COLORS)),
                                 "present": torch.nn.Linear(d, len(OBJECTS))})
    tower = model.model.vision_tower
    params = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.vision_pretrain_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    tower.train()
    loss_value, accuracy = float("nan"), float("nan")
    for step in range(cfg.vision_pretrain_steps):
        warmup_cosine_lr(optimizer, cfg.vision_pretrain_lr, step, cfg.vision_pretrain_steps)
        batch = torch.randint(len(scenes), (cfg.batch_size * 2,), generator=generator)
        features = _image_features(model, pixels[batch])
        cells = pool_cells(features[:, 1:], cfg)
        name_logits, color_logits = heads["name"](cells), heads["color"](cells)
        loss = F.cross_entropy(name_logits.flatten(0, 1), names[batch].flatten())
        loss = loss + F.cross_entropy(color_logits.flatten(0, 1), colors[batch].flatten(), ignore_index=-100)
        loss = loss + F.binary_cross_entropy_with_logits(heads["present"](features[:, 0]), present[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
        accuracy = (name_logits.argmax(-1) == names[batch]).float().mean().item()
        if progress:
            progress("vision", step + 1, cfg.vision_pretrain_steps, loss_value)
    tower.eval()
    return {"vision_loss": loss_value, "vision_cell_accuracy": accuracy}


@torch.no_grad()
def vision_features(model: LlavaForConditionalGeneration, pixels: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([_image_features(model, pixels[i:i + chunk]) for i in range(0, len(pixels), chunk)])


# ---- stage 2: supervised fine-tuning of projector + decoder ------------------------------------

def encode_example(processor: LlavaProcessor, example: Example, image_tokens: int) -> tuple[list[int], int]:
    """Token ids of prompt + answer + eos, and the prompt length (the loss starts after it).

    The prompt ids equal what ``processor(images=..., text=prompt)`` produces.
    """
    tokenizer = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example.instruction}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    prompt_ids: list[int] = []
    for token in tokenizer(prompt).input_ids:
        prompt_ids += [token] * (image_tokens if token == processor.image_token_id else 1)
    answer_ids = tokenizer(example.answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, len(prompt_ids)


def _collate(encoded: list[tuple[list[int], int]], weights: list[float], pad_id: int):
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), length), dtype=torch.long)
    loss_weight = torch.zeros((len(encoded), length))
    for row, ((ids, prompt_len), weight) in enumerate(zip(encoded, weights)):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention[row, :len(ids)] = 1
        loss_weight[row, prompt_len:len(ids)] = weight  # weight on targets at these positions
    return input_ids, attention, loss_weight


def supervised_finetune(model: LlavaForConditionalGeneration, processor: LlavaProcessor, features: torch.Tensor,
                        scene_index: Mapping[str, int], corpus: Sequence[Example], cfg: WorldConfig,
                        progress: Progress = None, *, present: torch.Tensor | None = None) -> dict:
    """``present`` (per row of ``features``, the multi-hot of the image's objects) enables the answer probes."""
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    encoded = [encode_example(processor, ex, features.shape[1]) for ex in corpus]
    weights = [cfg.yesno_loss_weight if ex.kind == "yesno" else 1.0 for ex in corpus]
    subjects = [OBJECTS.index(ex.subject) if ex.subject else -1 for ex in corpus]
    probes = answer_probes(cfg) if present is not None and cfg.answer_probe_weight > 0 else None
    trainable = [p for p in model.parameters() if p.requires_grad] + (list(probes.parameters()) if probes else [])
    optimizer = torch.optim.AdamW(trainable, lr=cfg.sft_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    embed, projector = model.get_input_embeddings(), model.model.multi_modal_projector
    model.train()
    loss_value, probe_value = float("nan"), float("nan")
    for step in range(cfg.sft_steps):
        warmup_cosine_lr(optimizer, cfg.sft_lr, step, cfg.sft_steps)
        batch = torch.randint(len(corpus), (cfg.batch_size,), generator=generator).tolist()
        input_ids, attention, loss_weight = _collate([encoded[i] for i in batch], [weights[i] for i in batch],
                                                     processor.tokenizer.pad_token_id)
        rows = [scene_index[corpus[i].scene_id] for i in batch]
        image_feats = projector(features[rows])
        mask = (input_ids == processor.image_token_id).unsqueeze(-1)
        inputs_embeds = embed(input_ids).masked_scatter(mask, image_feats.to(embed.weight.dtype))
        out = model.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention,
                                          output_hidden_states=probes is not None)
        logits = model.lm_head(out.last_hidden_state[:, :-1])
        token_loss = F.cross_entropy(logits.flatten(0, 1), input_ids[:, 1:].flatten(), reduction="none")
        target_weight = loss_weight[:, 1:].flatten()
        loss = (token_loss * target_weight).sum() / target_weight.sum()
        asked = [r for r, i in enumerate(batch) if subjects[i] >= 0] if probes is not None else []
        if asked:
            answer_pos = torch.tensor([encoded[batch[r]][1] - 1 for r in asked])
            hidden = out.hidden_states[cfg.llm_layers - 1][torch.tensor(asked), answer_pos]
            probe_loss = answer_probe_loss(probes, hidden, present[[rows[r] for r in asked]],
                                           torch.tensor([subjects[batch[r]] for r in asked]))
            loss = loss + cfg.answer_probe_weight * probe_loss
            probe_value = probe_loss.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        loss_value = loss.item()
        if progress:
            progress("sft", step + 1, cfg.sft_steps, loss_value)
    model.eval()
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(True)
    return {"sft_loss": loss_value, "answer_probe_loss": probe_value, "sft_examples": len(corpus)}


def answer_probes(cfg: WorldConfig) -> torch.nn.ModuleDict:
    """Linear heads on the hidden state that predicts a yes/no answer (see the module docstring)."""
    return torch.nn.ModuleDict({"image": torch.nn.Linear(cfg.llm_hidden, len(OBJECTS)),
                                "question": torch.nn.Linear(cfg.llm_hidden, len(OBJECTS))})


def answer_probe_loss(probes: torch.nn.ModuleDict, hidden: torch.Tensor, present: torch.Tensor,
                      subject: torch.Tensor) -> torch.Tensor:
    """BCE of the image probe against the image's objects (multi-hot) + CE of the question probe against
    the asked object's index: the two facts a yes/no answer is the conjunction of."""
    image = F.binary_cross_entropy_with_logits(probes["image"](hidden), present)
    return image + F.cross_entropy(probes["question"](hidden), subject)
