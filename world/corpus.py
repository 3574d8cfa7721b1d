"""The instruction corpus the base VLM is fine-tuned on, with controlled, realistic noise.

Descriptions name one object per sentence, in reading order. With probability
``caption_noise`` a caption ends with one extra sentence naming an *absent* object:
the scene theme's most typical object not in the image, in that object's typical
colour, the way human captions mention what usually goes with what they see. The
prior is sharp, as in real captions, so a model trained on them names the absent
object as confidently as the ones it sees: its own likelihood cannot tell them apart,
while the image can. Yes/no questions are balanced; their negatives are half same-theme
(adversarial) and half random. The same prior reaches the answers: asked about the theme's
most typical absent object (the one the captions add), the corpus answers "Yes." with
probability ``yesno_noise``, so the model says yes to it more often than to other absent
objects, and POPE's adversarial split, which asks about co-occurring objects, scores below
its random split, as with real VLMs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .config import WorldConfig
from .scenes import Scene, scene_rng
from .vocab import (
    INSTRUCTIONS,
    NO_ANSWER,
    OBJECTS,
    SENTENCE_TEMPLATES,
    THEMES,
    TYPICAL_COLORS,
    YES_ANSWER,
    YESNO_TEMPLATE,
    article,
)


@dataclass(frozen=True)
class Example:
    scene_id: str
    kind: str  # "describe" | "yesno"
    instruction: str
    answer: str
    subject: str = ""  # yes/no: the object the question asks about


def build_corpus(scenes: Sequence[Scene], cfg: WorldConfig) -> list[Example]:
    examples: list[Example] = []
    for scene in scenes:
        rng = scene_rng(cfg.seed, "corpus:" + scene.scene_id)
        for _ in range(cfg.describe_per_scene):
            examples.append(Example(scene.scene_id, "describe", rng.choice(INSTRUCTIONS),
                                    noisy_caption(scene, rng, cfg.caption_noise)))
        examples.extend(_yesno_examples(scene, rng, cfg))
    return examples


def instruction_for(scene_id: str, seed: int) -> str:
    """The description instruction a pool or eval scene is prompted with (deterministic)."""
    return scene_rng(seed, "instruction:" + scene_id).choice(INSTRUCTIONS)


def object_sentence(name: str, color: str, rng: random.Random) -> str:
    a = article(color)
    return rng.choice(SENTENCE_TEMPLATES).format(a=a, A=a.capitalize(), color=color, name=name)


def clean_caption(scene: Scene, rng: random.Random) -> str:
    return " ".join(object_sentence(obj.name, obj.color, rng) for obj in scene.objects)


def noisy_caption(scene: Scene, rng: random.Random, noise: float) -> str:
    caption = clean_caption(scene, rng)
    if rng.random() < noise:
        name = (cooccurring_absent(scene) or absent_objects(scene))[0]
        caption += " " + object_sentence(name, TYPICAL_COLORS[name], rng)
    return caption


def absent_objects(scene: Scene) -> list[str]:
    return [name for name in OBJECTS if name not in scene.object_names]


def cooccurring_absent(scene: Scene) -> list[str]:
    """Absent objects of the scene's theme, most typical first: what the language prior suggests."""
    return [name for name in THEMES[scene.theme] if name not in scene.object_names]


def _yesno_examples(scene: Scene, rng: random.Random, cfg: WorldConfig) -> list[Example]:
    examples = []
    for k in range(cfg.yesno_per_scene):
        if k % 2 == 0:
            name, answer = rng.choice(scene.object_names), YES_ANSWER
        else:
            name, answer = _negative(scene, rng, cfg.yesno_noise)
        question = YESNO_TEMPLATE.format(a=article(name), name=name)
        examples.append(Example(scene.scene_id, "yesno", question, answer, subject=name))
    return examples


def _negative(scene: Scene, rng: random.Random, noise: float) -> tuple[str, str]:
    same_theme = cooccurring_absent(scene)
    if same_theme and rng.random() < 0.5:
        name = rng.choice(same_theme)
        typical = name == same_theme[0]  # the absent object the captions' noise adds
        return name, YES_ANSWER if typical and rng.random() < noise else NO_ANSWER
    return rng.choice(absent_objects(scene)), NO_ANSWER
