"""Export preference pairs as a TRL vision preference dataset in Parquet.

Columns: `images` (list of images, the `datasets` Image feature: PNG bytes), and conversational `prompt`,
`chosen`, `rejected`. Load with `datasets.load_dataset("parquet", data_files=path, split="train")` or
`Dataset.from_parquet(path)`; the result feeds `trl.DPOTrainer` directly. TRL adds no EOS to conversational
rows, and llava-1.5's chat template closes an assistant turn without one: pass `eos_token` (e.g. "</s>") to
end every response with it, as csr's own DPO stage does, so the trainer learns where a response stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from training.pairs import DPOExample, trl_dataset


def export_trl(records: Sequence[DPOExample], out_path: str | Path, eos_token: str = "") -> Path:
    """Write `records` to `out_path` (a .parquet file), atomically; return the path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    trl_dataset(records, eos_token).to_parquet(str(partial))
    partial.replace(out_path)
    return out_path
