"""The miniature world's vocabulary: object classes, themes, colours, phrasings.

Objects cluster in themes; scenes draw most of their objects from one theme, so
same-theme pairs co-occur strongly. That co-occurrence is the language prior the
base VLM inherits from its noisy captions, and what POPE's adversarial split probes.
"""

from __future__ import annotations

THEMES: dict[str, tuple[str, ...]] = {
    "kitchen": ("mug", "plate", "bottle", "fork"),
    "garden": ("flower", "tree", "leaf", "mushroom"),
    "office": ("book", "lamp", "clock", "pencil"),
    "beach": ("ball", "umbrella", "boat", "star"),
}

OBJECTS: tuple[str, ...] = tuple(name for names in THEMES.values() for name in names)

THEME_OF: dict[str, str] = {name: theme for theme, names in THEMES.items() for name in names}

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}

# The colour a caption gives an object it names without seeing it: the language prior's typical attribute.
TYPICAL_COLORS: dict[str, str] = {
    "mug": "red", "plate": "blue", "bottle": "green", "fork": "yellow",
    "flower": "purple", "tree": "green", "leaf": "orange", "mushroom": "red",
    "book": "blue", "lamp": "yellow", "clock": "purple", "pencil": "orange",
    "ball": "red", "umbrella": "purple", "boat": "blue", "star": "yellow",
}

# Canonical name -> surface forms CHAIR matches (singular, plural, synonyms).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "mug": ("mug", "mugs", "cup", "cups"),
    "plate": ("plate", "plates", "dish", "dishes"),
    "bottle": ("bottle", "bottles"),
    "fork": ("fork", "forks"),
    "flower": ("flower", "flowers", "blossom", "blossoms"),
    "tree": ("tree", "trees"),
    "leaf": ("leaf", "leaves"),
    "mushroom": ("mushroom", "mushrooms"),
    "book": ("book", "books"),
    "lamp": ("lamp", "lamps"),
    "clock": ("clock", "clocks"),
    "pencil": ("pencil", "pencils"),
    "ball": ("ball", "balls"),
    "umbrella": ("umbrella", "umbrellas", "parasol", "parasols"),
    "boat": ("boat", "boats", "ship", "ships"),
    "star": ("star", "stars", "starfish"),
}

POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

INSTRUCTIONS: tuple[str, ...] = (
    "Describe the image.",
    "What do you see?",
    "Describe this picture in detail.",
    "What is in the image?",
    "Tell me what the picture shows.",
    "List the objects in the image.",
)

# One object per sentence, period-terminated: candidate generation splits at ".".
SENTENCE_TEMPLATES: tuple[str, ...] = (
    "There is {a} {color} {name}.",
    "I see {a} {color} {name}.",
    "{A} {color} {name} is in the picture.",
)

YESNO_TEMPLATE = "Is there {a} {name} in the image?"  # POPE's wording, article by noun
YES_ANSWER = "Yes."
NO_ANSWER = "No."


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"
