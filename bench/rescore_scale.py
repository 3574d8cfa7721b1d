"""Rescoring at the paper's scale: a world store's round-1 candidates replicated to N prompts, then timed.

    python bench/rescore_scale.py --db csr.duckdb [--prompts 1000,4000,12856]

For each N: copies the store, replicates round 1's prompts, trees, relevance scores and stored path parts to N
prompts (new prompt ids, same trees), then measures
- `csr rescore --tree KEY --lam 0.5` (round 1's tree), a new process: wall time, peak RSS (process start
  included, no Prefect API configured, as on a laptop);
- a 21-value λ curve (`--lam 0:1:0.05`) the same way;
- in process, λ = 0.5's pairs from the stored parts (what the stage now does) against the per-prompt Python
  path over the trees (`score_paths` + `select_pair`, what it did before), same store, same run: the ratio.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CSR = str(Path(sys.executable).parent / "csr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="csr.duckdb", help="a store after `make run` (round 1 complete)")
    parser.add_argument("--data-dir", default="csr_data")
    parser.add_argument("--prompts", default="1000,4000,12856")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_PROFILES_PATH"] = os.devnull  # no Prefect API: the stages run directly
    print("| prompts | paths | rescore λ=0.5: wall, RSS | 21-λ curve: wall | in process: stored parts vs "
          "per-prompt Python (ratio) |")
    print("|---|---|---|---|---|")
    for n in [int(x) for x in args.prompts.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "csr.duckdb"
            shutil.copy(args.db, db)
            keys = replicate(db, n)
            wall, rss = timed([CSR, "rescore", "--tree", keys["tree"], "--lam", "0.5", "--db", str(db),
                               "--data-dir", args.data_dir], env)
            curve_wall, _ = timed([CSR, "rescore", "--tree", keys["tree"], "--lam", "0:1:0.05", "--db", str(db),
                                   "--data-dir", args.data_dir, "--out", str(Path(tmp) / "curve")], env)
            fast, slow, paths = in_process(db, keys)
            print(f"| {n:,} | {paths:,} | {wall:.2f} s, {rss / 1e6:.0f} MB | {curve_wall:.2f} s | "
                  f"{fast:.3f} s vs {slow:.2f} s ({slow / fast:.0f}x) |", flush=True)


def replicate(db: Path, n: int) -> dict[str, str]:
    """Round 1's candidates copied under new prompt ids until the round holds `n` prompts; old λ=0.5 pairs go."""
    from storage import stages
    from storage.store import Store

    store = Store(db)
    try:
        (keys,) = [k for k in stages.scored_candidates(store, round_=1)][:1]
        parts = stages.find_stages(store, "path_parts", tree=keys["tree"], relevance=keys["relevance"])
        keys["parts"] = parts[0].stage_key
        base = store.scalar("SELECT count(*) FROM prompts WHERE stage_key = ? AND status = 'ok'", [keys["prompts"]])
        copies = math.ceil(n / base)
        with store.transaction() as con:
            for table, key in (("prompts", keys["prompts"]), ("tree_nodes", keys["tree"]),
                               ("relevance_scores", keys["relevance"]), ("path_parts", keys["parts"])):
                ok = " AND status = 'ok'" if table == "prompts" else ""
                con.execute(f"INSERT INTO {table} SELECT {table}.* REPLACE (prompt_id || '~' || k AS prompt_id) "
                            f"FROM {table}, range(1, ?) t(k) WHERE stage_key = ?{ok}", [copies, key])
                con.execute(f"DELETE FROM {table} WHERE stage_key = ? AND prompt_id IN (SELECT prompt_id FROM "
                            f"(SELECT DISTINCT prompt_id FROM {table} WHERE stage_key = ? ORDER BY prompt_id) "
                            f"OFFSET ?)", [key, key, n])
            con.execute("DELETE FROM stages WHERE stage IN ('calibrate_select', 'pair_accuracy')")
    finally:
        store.close()
    return keys


def timed(command: list[str], env: dict) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) * 1000
    return wall, rss


def in_process(db: Path, keys: dict[str, str]) -> tuple[float, float, int]:
    from csr_core.rescore import select_pairs, weigh_all
    from csr_core.reward import RewardConfig, score_paths, select_pair
    from flows.config import load_config
    from storage.artifacts import read_path_parts, read_scored_tree
    from storage.store import Store
    from tasks.calibrate import path_table, scored_node

    cfg = RewardConfig(**{**vars(load_config().reward), "lam": 0.5})
    store = Store(db, read_only=True)
    try:
        start = time.perf_counter()
        _, _, table = path_table(read_path_parts(store, keys["parts"]))
        select_pairs(table, weigh_all(table, cfg), cfg)
        fast = time.perf_counter() - start
        start = time.perf_counter()
        tree = read_scored_tree(store, keys["tree"], keys["relevance"])
        for _, nodes in tree.groupby("prompt_id", sort=True):
            select_pair(score_paths([scored_node(row) for row in nodes.itertuples()], cfg), cfg)
        slow = time.perf_counter() - start
    finally:
        store.close()
    return fast, slow, len(table.group)


if __name__ == "__main__":
    main()
