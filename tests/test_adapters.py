
import pytest
import torch
from PIL import Image

from csr_core.adapters.relevance import OpenClipRelevance
from csr_core.adapters.vlm import VLMAdapter, delimiter_token_ids
from csr_testing.tiny_models import make_tiny_clip, make_tiny_llava


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    torch.set_num_threads(2)
    return VLMAdapter.from_pretrained(make_tiny_llava(tmp_path_factory.mktemp("llava")))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return OpenClipRelevance.from_pretrained(make_tiny_clip(tmp_path_factory.mktemp("clip")))


IMAGES = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (32, 32), (0, 0, 255))]


def test_tiny_llava_reloads_with_auto_classes(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    path = make_tiny_llava(tmp_path)
    tokenizer = AutoProcessor.from_pretrained(path).tokenizer
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert isinstance(model, LlavaForConditionalGeneration)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == model.config.image_token_id != tokenizer.unk_token_id
    assert tokenizer("<image>", add_special_tokens=False)["input_ids"] == [image_id]


def test_format_prompt_places_image_per_template(tiny_vlm):
    assert tiny_vlm.format_prompt("What is this? <image>") == "USER: <image>\nWhat is this? ASSISTANT:"
    assert tiny_vlm.format_prompt("<image>\nDescribe.") == "USER: <image>\nDescribe. ASSISTANT:"


def test_delimiter_ids_come_from_the_tokenizer(tiny_vlm):
    vocab = tiny_vlm.tokenizer.get_vocab()
    assert tiny_vlm.delimiter_ids == frozenset({vocab["."]})
    assert tiny_vlm.eos_ids == frozenset({vocab["</s>"]})
    assert delimiter_token_ids(tiny_vlm.tokenizer, delimiter="?") == [vocab["?"]]


def test_prefix_cache_plus_tail_matches_full_forward(tiny_vlm):
    """The first logits of a node (prefix cache + padded tail) equal a plain forward over the whole sequence."""
    from csr_core.adapters.vlm import NodeBatch

    vocab = tiny_vlm.tokenizer.get_vocab()
    response = [vocab["a"], vocab["dog"], vocab["."]]
    prefixes = [tiny_vlm.encode_prefix(IMAGES[0], "<image>\ndescribe"), tiny_vlm.encode_prefix(IMAGES[1], "hi")]
    batch = NodeBatch(tiny_vlm.model, prefixes, [response, []], tiny_vlm.device)
    logits = batch.prefill()
    for row, (image, text, resp) in enumerate([(IMAGES[0], "<image>\ndescribe", response), (IMAGES[1], "hi", [])]):
        inputs = tiny_vlm.model_inputs([image], [text])
        ids = torch.cat([inputs["input_ids"], torch.tensor([resp], dtype=torch.long)], dim=1)
        with torch.no_grad():
            full = tiny_vlm.model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0, -1]
        assert torch.allclose(logits[row], full, atol=1e-4)


def test_generate_is_batched_and_seeded(tiny_vlm):
    prompts = ["<image>\ndescribe the image", "is there a dog? <image>"]
    greedy = tiny_vlm.generate(IMAGES, prompts, max_new_tokens=5, batch_size=1)
    assert greedy == tiny_vlm.generate(IMAGES, prompts, max_new_tokens=5, batch_size=2)
    sampled = tiny_vlm.generate(IMAGES, prompts, do_sample=True, max_new_tokens=5, num_return_sequences=3, seed=7)
    assert len(sampled) == 2 and all(len(s) == 3 for s in sampled)
    assert sampled == tiny_vlm.generate(IMAGES, prompts, do_sample=True, max_new_tokens=5, num_return_sequences=3,
                                        seed=7)


def test_relevance_matches_per_pair_cosine(tiny_clip):
    texts = ["a red square", "a blue square", "a dog " * 100]  # the last one is longer than the context
    index = [0, 1, 1]
    batched = tiny_clip.cosine(IMAGES, texts, index)
    for cos, text, i in zip(batched, texts, index):
        image = tiny_clip.encode_images([IMAGES[i]])
        single = (image * tiny_clip.encode_texts([text])).sum().item()
        assert cos == pytest.approx(single, abs=1e-5)
    assert all(-1.0 <= c <= 1.0 for c in batched)
    assert tiny_clip.cosine(IMAGES, [], []) == []
    with pytest.raises(ValueError):
        tiny_clip.cosine(IMAGES, ["x"], [0, 1])


def test_yes_probability_is_the_first_token_odds_and_ignores_padding(tiny_vlm):
    vocab = tiny_vlm.tokenizer.get_vocab()
    assert (tiny_vlm.answer_first_token("Yes"), tiny_vlm.answer_first_token("No")) == (vocab["yes"], vocab["no"])
    prompts = ["is there a dog in the image?", "<image>\nis there a red cup on the table in this picture?"]
    batched = tiny_vlm.yes_probability(IMAGES, prompts, batch_size=2)  # the first prompt is left-padded
    for image, prompt, p_yes in zip(IMAGES, prompts, batched):
        inputs = tiny_vlm.model_inputs([image], [prompt])
        with torch.no_grad():
            logits = tiny_vlm.model(**inputs).logits[0, -1]
        odds = torch.softmax(logits[[vocab["yes"], vocab["no"]]], dim=-1)
        assert p_yes == pytest.approx(odds[0].item(), abs=1e-5)
    assert 0.0 < batched[0] < 1.0


def _answer_token(tokenizer, word, prompt="USER: <image>\nIs there a cat in the image? ASSISTANT:"):
    from types import SimpleNamespace

    return VLMAdapter.answer_first_token(SimpleNamespace(format_prompt=lambda _: prompt, tokenizer=tokenizer), word)


def test_answer_first_token_with_a_sentencepiece_style_tokenizer():
    """Llama's tokenizers mark a word start with "▁": the answer's first token is "▁Yes", as generated."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["▁USER:", "▁<image>", "▁Is", "▁there", "▁a", "▁cat", "▁in", "▁the", "▁image?", "▁ASSISTANT:",
             "▁Yes", "▁No"]
    vocab = {"<unk>": 0, **{word: i + 1 for i, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    assert (_answer_token(tokenizer, "Yes"), _answer_token(tokenizer, "No")) == (11, 12)


def test_answer_first_token_refuses_a_tokenizer_that_merges_it_into_the_prompt():
    def merging(text, add_special_tokens=False):  # one token per text: the answer never follows the prompt
        return {"input_ids": [len(text)]}

    with pytest.raises(ValueError, match="merges it"):
        _answer_token(merging, "Yes")


def test_period_delimiters_are_the_papers_single_token_and_suffix_ones_all_that_end_a_sentence():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from csr_core.adapters.vlm import period_token_id

    vocab = {"<unk>": 0, ".": 1, "▁.": 2, ").": 3, "▁mug": 4, "▁cup": 5}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    assert delimiter_token_ids(tokenizer) == [1, 2, 3]
    assert period_token_id(tokenizer) == 1
    no_period = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
        vocab={"<unk>": 0, "▁mug": 1}, unk_token="<unk>")), unk_token="<unk>")
    with pytest.raises(ValueError, match="no '.' token"):
        period_token_id(no_period)


def test_the_adapter_takes_its_delimiters_from_the_search_setting(tmp_path):
    path = make_tiny_llava(tmp_path)
    vlm = VLMAdapter.from_pretrained(path, delimiters="period")
    assert vlm.delimiter_ids == frozenset({vlm.tokenizer.convert_tokens_to_ids(".")})
