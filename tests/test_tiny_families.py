"""The tiny VLM families of csr_testing.tiny_families: a saved dir reloads through the Auto classes as the same
model; each chat template puts the family's image placeholder where its processor expands it; the image token counts
match the model for several sizes and aspect ratios (and differ between aspect ratios where the family's resolution is
dynamic); batched, left-padded generation runs."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from csr_testing.tiny_families import FAMILIES, build_tiny_vlm, make_tiny_vlm
from csr_testing.tiny_models import _make_tokenizer

LLAVA_TOKENIZER = _make_tokenizer()

SIZES = ((48, 40), (32, 80), (80, 32))  # PIL (width, height)
QWEN_COUNTS = {(48, 40): 30, (32, 80): 40, (80, 32): 40}  # one token per 8x8 pixels after smart_resize
ANYRES_COUNTS = {(48, 40): 24, (32, 80): 22, (80, 32): 18}  # base tile + unpadded grid + a newline per row
SPLIT_COUNTS = {(48, 40): 20, (32, 80): 12, (80, 32): 12}  # 4 per crop: 2x2 or 2x1 crops + the global image
FIXED_16 = dict.fromkeys(SIZES, 16)
# family: (placeholder in the chat-template prompt, repeated image token, image tokens per size)
EXPECTED = {
    "llava": ("<image>", "<image>", FIXED_16),
    "llava_next": ("<image>", "<image>", ANYRES_COUNTS),
    "llava_onevision": ("<image>", "<image>", ANYRES_COUNTS),
    "qwen2_vl": ("<|vision_start|><|image_pad|><|vision_end|>", "<|image_pad|>", QWEN_COUNTS),
    "qwen2_5_vl": ("<|vision_start|><|image_pad|><|vision_end|>", "<|image_pad|>", QWEN_COUNTS),
    "qwen3_vl": ("<|vision_start|><|image_pad|><|vision_end|>", "<|image_pad|>", QWEN_COUNTS),
    "gemma3": ("<start_of_image>", "<image_soft_token>", FIXED_16),
    "idefics3": ("<image>", "<image>", SPLIT_COUNTS),
    "smolvlm": ("<image>", "<image>", SPLIT_COUNTS),
}
EOS = {
    "llava": ["</s>"], "llava_next": ["</s>"], "llava_onevision": ["<|im_end|>", "<|endoftext|>"],
    "qwen2_vl": ["<|im_end|>", "<|endoftext|>"], "qwen2_5_vl": ["<|im_end|>", "<|endoftext|>"],
    "qwen3_vl": ["<|im_end|>", "<|endoftext|>"], "gemma3": ["<eos>", "<end_of_turn>"],
    "idefics3": ["<end_of_utterance>"], "smolvlm": ["<end_of_utterance>"],
}  # generation_config.eos_token_id; the tokenizer's eos is the first, but Gemma 3's is <end_of_turn>
TOKENIZER_EOS = {family: eos[0] for family, eos in EOS.items()} | {"gemma3": "<end_of_turn>"}


def _image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    """(family, saved dir, model, processor): the model and processor built in memory from the same seed."""
    torch.set_num_threads(2)
    family = request.param
    out_dir = make_tiny_vlm(family, tmp_path_factory.mktemp(family))
    model, processor = build_tiny_vlm(family)
    return family, out_dir, model, processor


def _prompt(processor, text: str = "Describe this image.") -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def test_the_saved_dir_reloads_as_the_same_model(tiny):
    family, out_dir, model, processor = tiny
    loaded_processor = AutoProcessor.from_pretrained(out_dir)
    loaded = AutoModelForImageTextToText.from_pretrained(out_dir).eval()
    assert loaded.config.model_type == family
    assert type(loaded) is type(model) and type(loaded_processor) is type(processor)
    assert loaded.dtype == torch.float32 and not loaded.training
    assert loaded.get_output_embeddings().weight.data_ptr() != loaded.get_input_embeddings().weight.data_ptr()
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded_processor.tokenizer.padding_side == "left"
    assert _prompt(loaded_processor) == _prompt(processor)
    eos = loaded.generation_config.eos_token_id
    assert ([eos] if isinstance(eos, int) else eos) == loaded_processor.tokenizer.convert_tokens_to_ids(EOS[family])
    inputs = processor(images=[_image((48, 40))], text=[_prompt(processor)], return_tensors="pt")
    loaded_inputs = loaded_processor(images=[_image((48, 40))], text=[_prompt(processor)], return_tensors="pt")
    assert inputs.keys() == loaded_inputs.keys()
    for key in inputs:
        assert torch.equal(torch.as_tensor(inputs[key]), torch.as_tensor(loaded_inputs[key])), key
    with torch.no_grad():
        torch.testing.assert_close(loaded(**loaded_inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_the_tokenizer_keeps_special_tokens_whole_and_words_as_tiny_models(tiny):
    family, _, _, processor = tiny
    tokenizer = processor.tokenizer
    prompt = _prompt(processor)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert tokenizer.unk_token not in tokens, tokens
    assert tokenizer.eos_token == TOKENIZER_EOS[family]
    added = [str(token) for token in tokenizer.added_tokens_decoder.values()]
    assert set(tokenizer.all_special_tokens) <= set(added)
    for special in added:
        assert tokenizer.tokenize(special) == [special]
        assert tokenizer.tokenize(f"a{special}dog.") == ["a", special, "dog", "."]
    sentence = "There is a Dog on the grass. A man, near it, holds a red kite!"
    assert tokenizer(sentence, add_special_tokens=False)["input_ids"] == LLAVA_TOKENIZER(sentence)["input_ids"]


def test_gemma3_puts_a_system_message_at_the_start_of_the_first_user_turn():
    _, processor = build_tiny_vlm("gemma3")
    messages = [{"role": "system", "content": [{"type": "text", "text": "Answer yes or no."}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a dog?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}]
    assert processor.apply_chat_template(messages) == (
        "<bos><start_of_turn>user\nAnswer yes or no.\n\n<start_of_image>Is there a dog?<end_of_turn>\n"
        "<start_of_turn>model\nYes.<end_of_turn>\n")


@pytest.mark.parametrize("size", SIZES)
def test_image_tokens_match_the_model_for_each_size(tiny, size):
    family, _, model, processor = tiny
    placeholder, image_token, counts = EXPECTED[family]
    prompt = _prompt(processor)
    assert placeholder in prompt
    inputs = processor(images=[_image(size)], text=[prompt], return_tensors="pt")
    image_token_id = processor.tokenizer.convert_tokens_to_ids(image_token)
    assert int((inputs["input_ids"] == image_token_id).sum()) == counts[size]
    with torch.no_grad():
        logits = model(**inputs).logits  # raises when the features and the image tokens differ in number
    assert logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(logits).all()


def test_dynamic_families_count_aspect_ratios_differently(tiny):
    family, _, _, processor = tiny
    image_token_id = processor.tokenizer.convert_tokens_to_ids(EXPECTED[family][1])
    counts = []
    for size in ((48, 40), (32, 80)):
        input_ids = processor(images=[_image(size)], text=[_prompt(processor)], return_tensors="pt")["input_ids"]
        counts.append(int((input_ids == image_token_id).sum()))
    assert (counts[0] == counts[1]) is (family in ("llava", "gemma3"))


def test_batched_generation_with_left_padding_runs(tiny):
    family, _, model, processor = tiny
    prompts = [_prompt(processor), _prompt(processor, "What is in the picture? Describe it in detail.")]
    inputs = processor(images=[[_image((48, 40))], [_image((32, 80), seed=1)]], text=prompts, padding=True,
                       return_tensors="pt")
    mask = inputs["attention_mask"]
    assert mask[:, -1].all() and not mask[:, 0].all()  # the first prompt is shorter and padded on the left
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert out.shape[0] == 2 and prompt_length < out.shape[1] <= prompt_length + 5
    assert torch.equal(out[:, :prompt_length], inputs["input_ids"])
