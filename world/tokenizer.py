"""A word-level tokenizer built from the world's vocabulary.

Every word, "." and "?" are single tokens, so sentence ends are token boundaries
(candidate generation splits at tokens ending in "."). The WordPiece decoder's
cleanup glues punctuation back: "There is a red mug ." decodes as "There is a red mug.".
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .vocab import (
    COLORS,
    INSTRUCTIONS,
    NO_ANSWER,
    POSITIONS,
    SENTENCE_TEMPLATES,
    SYNONYMS,
    YES_ANSWER,
    YESNO_TEMPLATE,
)

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE)
CHAT_WORDS = ("USER", "ASSISTANT", "SYSTEM", ":", ".", "?", ",", "!", "a", "an", "A", "An")

# Same layout as llava-1.5-hf's template: "USER: <image>\n{text} ASSISTANT: {answer}</s>".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def world_words() -> list[str]:
    """Every word the world's prompts and answers can use, in a fixed order."""
    texts = [*INSTRUCTIONS, *SENTENCE_TEMPLATES, YESNO_TEMPLATE, YES_ANSWER, NO_ANSWER, *POSITIONS]
    texts += [form for forms in SYNONYMS.values() for form in forms] + list(COLORS)
    words = list(CHAT_WORDS)
    for word in _split_words(texts):
        if word not in words and "{" not in word and "}" not in word:
            words.append(word)
    return words


def _split_words(texts: Iterable[str]) -> list[str]:
    pre = pre_tokenizers.Whitespace()
    return [piece for text in texts for piece, _ in pre.pre_tokenize_str(text.replace("{", " {").replace("}", "} "))]


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *world_words()])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE}, padding_side="left", chat_template=CHAT_TEMPLATE,
    )
