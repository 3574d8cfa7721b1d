"""Control pair selections that bracket CSR's calibrated reward (same candidates, same DPO).

- `random_pair`: two distinct complete paths drawn at random. If DPO on these helps as much as on CSR's
  pairs, the gain comes from training on self-generated text, not from the reward.
- `oracle_pair`: chosen = the path naming the fewest absent objects, rejected = the one naming the most,
  by ground truth. The best any reward could select from these candidates.

Both take a prompt's complete paths (as `csr_core.reward.score_paths` returns them, in path order) and
return a `csr_core.reward.PreferencePair`, or None with fewer than two paths.
"""
from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from csr_core.metrics import ObjectVocab
from csr_core.reward import PathReward, PreferencePair

CONTROLS = ("random", "oracle")


def random_pair(paths: Sequence[PathReward], seed: int, prompt_id: str) -> PreferencePair | None:
    """Two distinct paths drawn uniformly, chosen first; the same for the same seed and prompt."""
    if len(paths) < 2:
        return None
    rng = random.Random(f"{seed}:{prompt_id}")  # str seeds hash with SHA-512: stable across processes
    chosen, rejected = rng.sample(range(len(paths)), 2)
    return PreferencePair(paths[chosen], paths[rejected])


def oracle_pair(paths: Sequence[PathReward], truth_objects: Collection[str], vocab: ObjectVocab
                ) -> PreferencePair | None:
    """Fewest hallucinated objects as chosen, most as rejected (by ground truth).

    Ties for chosen: most present objects named, then the first in path order. Ties for rejected: fewest
    present objects named, then the last in path order. The two always differ; when every path is equally
    good the pair carries no preference, as a tie in a reward would (kept so every arm trains on as many pairs).
    """
    if len(paths) < 2:
        return None
    counts = [object_counts(path.text, truth_objects, vocab) for path in paths]
    chosen = min(range(len(paths)), key=lambda i: (counts[i][0], -counts[i][1], i))
    rejected = max((i for i in range(len(paths)) if i != chosen), key=lambda i: (counts[i][0], -counts[i][1], i))
    return PreferencePair(paths[chosen], paths[rejected])


def object_counts(text: str, truth_objects: Collection[str], vocab: ObjectVocab) -> tuple[int, int]:
    """(hallucinated objects named, present objects named), each object counted once."""
    named = vocab.mentions(text)
    present = set(truth_objects)
    n_present = sum(obj in present for obj in named)
    return len(named) - n_present, n_present
