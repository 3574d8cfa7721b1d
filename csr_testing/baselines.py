"""References the batched search is checked against: one `model.generate` call per tree node (the paper's
code), and a plain forward pass over a node's whole sequence. Both re-encode image + prompt + response."""

from __future__ import annotations

import torch

from csr_core.adapters.vlm import PER_TOKEN_INPUTS
from csr_core.beams import Candidate


def full_sequence_inputs(vlm, image, instruction, response) -> dict:
    """The adapter's model inputs for image + prompt, with `response` tokens appended (no padding)."""
    inputs = vlm.model_inputs([image], [instruction])
    n = len(response)
    for name in PER_TOKEN_INPUTS:
        if name not in inputs:
            continue
        column = inputs[name]
        if name == "input_ids":
            extra = torch.tensor([list(response)], dtype=column.dtype, device=column.device)
        elif name == "attention_mask":
            extra = torch.ones(1, n, dtype=column.dtype, device=column.device)
        else:  # token types: text
            extra = torch.zeros(1, n, dtype=column.dtype, device=column.device)
        inputs[name] = torch.cat([column, extra], dim=1)
    return inputs


@torch.inference_mode()
def response_logprobs(vlm, image, instruction, response) -> list[float]:
    """log p(response[i] | image, prompt, response[:i]) from one forward pass over the whole sequence."""
    inputs = full_sequence_inputs(vlm, image, instruction, response)
    logits = vlm.model(**inputs).logits[0].float()
    n = len(response)
    log_probs = torch.log_softmax(logits[-n - 1 : -1], dim=-1)
    return log_probs[torch.arange(n), torch.tensor(list(response))].tolist()


class PerNodeGenerate:
    """The paper's expansion: every node re-encodes image + prompt + response and calls `generate` on its own
    (diversity off: transformers 5 has no group beam search)."""

    def __init__(self, vlm):
        self.vlm = vlm
        self.eos_ids = vlm.eos_ids
        self.stop_ids = sorted(vlm.delimiter_ids | vlm.eos_ids)

    def encode_prefix(self, image, instruction):
        return image, instruction

    def decode(self, token_ids):
        return self.vlm.decode(token_ids)

    @torch.inference_mode()
    def search_sentences(self, prefixes, responses, max_new_tokens, params):
        out = []
        for (image, instruction), response, budget in zip(prefixes, responses, max_new_tokens):
            inputs = full_sequence_inputs(self.vlm, image, instruction, response)
            gen = self.vlm.model.generate(
                **inputs, num_beams=params.num_beams, num_return_sequences=params.num_beams, do_sample=False,
                max_new_tokens=budget, eos_token_id=self.stop_ids, length_penalty=params.length_penalty,
                output_scores=True, return_dict_in_generate=True, early_stopping=False,
                suppress_tokens=sorted(self.vlm.suppress_ids) or None,
                pad_token_id=self.vlm.tokenizer.pad_token_id,
            )
            start = inputs["input_ids"].shape[1]
            out.append([self._candidate(seq[start:].tolist(), float(score), budget)
                        for seq, score in zip(gen.sequences, gen.sequences_scores)])
        return out

    def _candidate(self, tokens, score, budget):
        stop = next((i for i, t in enumerate(tokens) if t in self.stop_ids), None)
        tokens = tokens[: stop + 1] if stop is not None else tokens[:budget]
        last = tokens[-1]
        reason = "eos" if last in self.vlm.eos_ids else "delimiter" if last in self.vlm.delimiter_ids else "length"
        return Candidate(tuple(tokens), score * len(tokens), score, reason)
