"""What a token-level beam search takes and returns: its settings and its finished hypotheses (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from csr_core.validation import require


@dataclass(frozen=True)
class BeamParams:
    num_beams: int = 5
    num_beam_groups: int = 5
    diversity_penalty: float = 3.0
    length_penalty: float = 1.0

    def __post_init__(self):
        require(self.num_beams >= 1, "num_beams", f"must be >= 1, got {self.num_beams}")
        require(self.num_beam_groups >= 1 and self.num_beams % self.num_beam_groups == 0, "num_beam_groups",
                f"must divide the number of beams ({self.num_beams}), got {self.num_beam_groups}")
        require(self.diversity_penalty >= 0, "diversity_penalty", f"must be >= 0, got {self.diversity_penalty}")

    @property
    def group_size(self) -> int:
        return self.num_beams // self.num_beam_groups


@dataclass(frozen=True)
class Candidate:
    """One finished hypothesis: a sentence (or the end of the response)."""

    token_ids: tuple[int, ...]
    logprob_sum: float  # raw sum of token log-probs (no diversity penalty)
    score: float  # transformers' sequences_scores: penalized log-prob sum / len ** length_penalty
    finish_reason: str  # "delimiter" | "eos" | "length"
