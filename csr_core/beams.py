"""What a token-level beam search takes and returns: its settings and its finished hypotheses (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from csr_core.validation import require

GROUP_RULES = ("transformers4", "csr")


@dataclass(frozen=True)
class BeamParams:
    num_beams: int = 5
    num_beam_groups: int = 5
    diversity_penalty: float = 3.0
    length_penalty: float = 1.0
    # How groups (num_beam_groups > 1) finish. "transformers4", as transformers 4.46.3's group beam search:
    # a finished group emits the pad token from then on (which is what later groups' diversity penalty then
    # counts), and a group is finished once its best top-K candidate, a just-finished one included, cannot
    # beat its worst hypothesis. "csr": a finished group keeps expanding its best beam and the test uses the
    # best running beam (transformers 5's rule). One group always follows transformers 5's beam search.
    group_rules: str = "transformers4"

    def __post_init__(self):
        require(self.num_beams >= 1, "num_beams", f"must be >= 1, got {self.num_beams}")
        require(self.num_beam_groups >= 1 and self.num_beams % self.num_beam_groups == 0, "num_beam_groups",
                f"must divide the number of beams ({self.num_beams}), got {self.num_beam_groups}")
        require(self.diversity_penalty >= 0, "diversity_penalty", f"must be >= 0, got {self.diversity_penalty}")
        require(self.group_rules in GROUP_RULES, "group_rules",
                f"must be one of {GROUP_RULES}, got {self.group_rules!r}")

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
