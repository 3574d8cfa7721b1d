"""The `csr` command line."""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager

EXAMPLES = """examples:
  csr run                                  # CSR on the miniature world (builds it first if missing)
  csr run --rounds 3 --set reward.lam=0.5  # three rounds, another visual weight
  csr run --config configs/paper.yaml --set model.path=/models/llava-1.5-7b-hf
  csr rescore --lam 0.5                    # new pairs from stored candidates; no VLM, no CLIP
  csr sweep --lam 0,0.5,0.9 --controls random,oracle --seeds 0,1,2
  csr report --out ./csr_report            # report.md with tables and plots
  csr export --format trl --out pairs.parquet
  csr export --format pope-answers --out answers/   # also chair-captions: files the reference scripts read
  csr sql "SELECT round, count(*) FROM preference_pairs_v GROUP BY round"
  csr status
"""


# Without an API URL, Prefect starts a temporary local server and gives it 20 s by default; a busy 2-core
# machine (training in another process) can need more. An explicit setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every `finally` runs (the store closes, the server stops)."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    import duckdb

    from flows.server import PrefectUnavailable
    from storage.store import StoreLockedError

    previous = _on_sigterm()
    try:
        return args.handler(args) or 0
    except (ValueError, FileNotFoundError, LookupError, StoreLockedError, PrefectUnavailable) as exc:
        return _fail(exc)
    except duckdb.Error as exc:
        return _fail(f"database: {_first_line(exc)}")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return _fail(exc)  # "No space left on device": _fail says it as "disk full"
        raise
    except (KeyboardInterrupt, Terminated) as exc:
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"csr: {how}; rerun the same command to resume where it stopped", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _fail(message) -> int:
    text = str(message)
    if "No space left on device" in text:
        text = f"disk full: {_first_line(text)}; free space and rerun the same command to resume"
    print(f"csr: error: {text}", file=sys.stderr)
    return 2


def _first_line(message) -> str:
    return str(message).strip().splitlines()[0] if str(message).strip() else type(message).__name__


def _on_sigterm():
    """Turn SIGTERM into `Terminated` (main thread only; elsewhere, e.g. under a test runner thread, skip)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csr", description="Calibrated Self-Rewarding for vision-language models, resumable, on DuckDB.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = _command(commands, "run", cmd_run, "run CSR rounds end to end (evaluate, then sample -> ... -> DPO)")
    _config_options(run)
    run.add_argument("--rounds", type=int, help="number of CSR rounds (default: the config's `rounds`)")
    run.add_argument("--retry-failed", action="store_true",
                     help="run the failed items of candidate and relevance stages again (runtime.retry_failed)")

    world = _command(commands, "world", None, "the miniature world (embedded default data and models)")
    world_commands = world.add_subparsers(title="world commands", metavar="COMMAND")
    build = _command(world_commands, "build", cmd_world_build, "build scenes, corpus, base VLM and CLIP scorer")
    _config_options(build)
    build.add_argument("--seed", type=int, help="world seed (same seed, same world)")

    rescore = _command(commands, "rescore", cmd_rescore,
                       "recompute calibrated rewards and pairs for stored candidates (no VLM, no CLIP)")
    _config_options(rescore)
    rescore.add_argument("--lam", type=_lams, help="visual weight λ in [0, 1] (reward.lam), a list (0,0.5,0.9) or a "
                         "range START:STOP:STEP (0:1:0.05) for a λ curve")
    rescore.add_argument("--out", default="./csr_report", help="where a λ curve's table and plot go "
                         "(default ./csr_report)")
    rescore.add_argument("--mode", choices=["rank", "value"], help="calibration mode (reward.mode)")
    rescore.add_argument("--round", type=int, dest="round_", help="only the candidates of this round")
    rescore.add_argument("--tree", help="only this candidate tree stage key")

    sweep = _command(commands, "sweep", cmd_sweep,
                     "train one round per λ (and per control) and seed from the same candidates; compare")
    _config_options(sweep)
    sweep.add_argument("--lam", type=_floats, help="visual weights λ, comma-separated (default: reward.lam)")
    sweep.add_argument("--controls", type=_names, default=[], help="control arms: random,oracle")
    sweep.add_argument("--seeds", type=_ints, help="seeds of prompt sampling and DPO (default: prompts.seed)")
    sweep.add_argument("--round", type=int, default=1, dest="round_", help="the round to sweep (default 1)")

    report = _command(commands, "report", cmd_report, "write report.md with tables and plots from the store")
    report.add_argument("--out", default="./csr_report", help="output folder (default ./csr_report)")
    report.add_argument("--format", choices=["md", "html"], default="md", help="md: report.md; html: also "
                        "report.html (default md)")
    report.add_argument("--db", default="./csr.duckdb", help="DuckDB file (default ./csr.duckdb)")

    export = _command(commands, "export", cmd_export, "write stored preference pairs as a dataset, or evaluation "
                      "answers as the POPE and CHAIR reference scripts read them")
    export.add_argument("--format", choices=["trl", "pope-answers", "chair-captions"], default="trl",
                        help="trl: Parquet with images, prompt, chosen, rejected (TRL's vision preference format); "
                        "pope-answers: per model and split, answer and question JSONL for POPE's evaluate.py; "
                        "chair-captions: per model and split, caption JSONL for the CHAIR tool (default trl)")
    export.add_argument("--out", required=True, help="output file (trl), e.g. pairs.parquet, or folder (answers)")
    export.add_argument("--pairs", help="pairs stage key (default: the newest)")
    export.add_argument("--eval", action="append", dest="evals", metavar="KEY",
                        help="answers: this evaluate stage key (repeatable; default: each model's newest)")
    export.add_argument("--db", default="./csr.duckdb", help="DuckDB file (default ./csr.duckdb)")

    sql = _command(commands, "sql", cmd_sql, "run a read-only SQL query on the artifact store")
    sql.add_argument("query", help="SQL, e.g. \"SELECT * FROM preference_pairs_v LIMIT 5\"")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.add_argument("--db", default="./csr.duckdb", help="DuckDB file (default ./csr.duckdb)")

    status = _command(commands, "status", cmd_status, "stages with keys, status, item counts and timings")
    status.add_argument("--db", default="./csr.duckdb", help="DuckDB file (default ./csr.duckdb)")

    backup = _command(commands, "backup", cmd_backup, "copy the store to DEST, consistent even during a run")
    backup.add_argument("dest", help="the copy's path, e.g. backups/csr-2026-12-01.duckdb")
    backup.add_argument("--db", default="./csr.duckdb", help="DuckDB file (default ./csr.duckdb)")
    return parser


def _command(commands, name: str, handler: Callable | None, help_text: str) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.set_defaults(handler=handler)
    return sub


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="config file merged over configs/default.yaml (repeatable)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="override a setting, e.g. --set search.num_token_beams=3 (repeatable)")
    parser.add_argument("--db", help="DuckDB file (default ./csr.duckdb)")
    parser.add_argument("--data-dir", help="where models, images and runs are written (default ./csr_data)")


def _overrides(args, **extra) -> list[str]:
    values = list(args.overrides)
    if getattr(args, "db", None):
        values.append(f"db={args.db}")
    if getattr(args, "data_dir", None):
        values.append(f"data_dir={args.data_dir}")
    values += [f"{key}={value}" for key, value in extra.items() if value is not None]
    return values


def _validated(args, *, check_db: bool = True, **extra):
    """The run config, loaded and checked once before anything starts (exit 2 on a bad setting)."""
    from flows.config import load_config
    from flows.inputs import check_user_inputs

    cfg = load_config(args.config, _overrides(args, **extra))
    check_user_inputs(cfg)
    if check_db:
        _hold_db(cfg.db)
    return cfg


def _hold_db(path: str) -> None:
    """Become the store's one writer for the rest of the command (StoreLockedError names the holder)."""
    from storage.store import open_store

    open_store(path)


@contextmanager
def _flows():
    """Where the command's flows report: the configured Prefect API, or a temporary server csr stops."""
    from flows.server import prefect_api

    with prefect_api():
        yield


def cmd_run(args) -> int:
    cfg = _validated(args, rounds=args.rounds, **{"runtime.retry_failed": args.retry_failed or None})
    from flows.inputs import check_rounds_fit, resolve_inputs
    from flows.pipeline import csr_pipeline

    if cfg.prompts.source != "world":  # the world's pool is built by the run; the pipeline checks it then
        check_rounds_fit(cfg, resolve_inputs(cfg), cfg.rounds)

    with _flows():
        summary = csr_pipeline(config=cfg)
    print(json.dumps(summary, indent=2))
    print(f"done: artifacts in {cfg.db}; try `csr status --db {cfg.db}`")
    return 0


def cmd_world_build(args) -> int:
    cfg = _validated(args, **{"world.seed": args.seed})
    from flows.pipeline import world_flow

    with _flows():
        print(json.dumps(world_flow(config=cfg), indent=2))
    print(f"world built in {cfg.world_dir}")
    return 0


def cmd_rescore(args) -> int:
    lams = args.lam or []
    cfg = _validated(args, **{"reward.lam": lams[0] if len(lams) == 1 else None, "reward.mode": args.mode})
    from flows.config import check_lams
    from flows.server import configured_api_url

    check_lams(cfg, lams)
    if configured_api_url():  # runs are recorded in Prefect
        from flows.rescore import rescore

        with _flows():
            results = rescore(config=cfg, round_=args.round_, tree_key=args.tree, lams=lams or None)
    else:  # the stages run directly, recorded in DuckDB only: no temporary server to wait for
        from flows.rescoring import rescore_candidates, with_reference

        results = rescore_candidates(cfg, with_reference(lams) if lams else None, args.round_, args.tree)
    if not results:
        print(f"nothing to rescore: no complete candidates with relevance scores in {cfg.db}")
    elif len(lams) > 1:
        return _print_curve(cfg.db, results, args.out)
    print(json.dumps(results, indent=2))
    return 0


def _print_curve(db: str, results: list[dict], out: str) -> int:
    from report.curve import curve_markdown, lambda_curve, write_curve
    from storage.store import open_store

    curve = lambda_curve(open_store(db), results)
    files = write_curve(curve, out)
    print(curve_markdown(curve))
    print(f"λ curve: {files['md']}, {files['csv']}, {files['png']}")
    return 0


def cmd_sweep(args) -> int:
    from flows.sweep import check_arms, sweep

    cfg = _validated(args, check_db=False)
    lams = args.lam if args.lam is not None else [cfg.reward.lam]
    seeds = args.seeds if args.seeds is not None else [cfg.prompts.seed]
    check_arms(cfg, lams, args.controls, seeds, args.round_)  # before the database is created
    _hold_db(cfg.db)
    with _flows():
        result = sweep(config=cfg, lams=lams, controls=args.controls, seeds=seeds, round_=args.round_)
    print(json.dumps(result["arms"], indent=2))
    for reason in result["skipped"].values():
        print(reason)
    print(result["markdown"])
    print(f"done: `csr report --db {cfg.db}` writes the full report")
    return 0


def cmd_report(args) -> int:
    from report.write import write_report

    print(f"report written to {write_report(args.db, args.out, html=args.format == 'html')}")
    return 0


def cmd_export(args) -> int:
    from flows.export import ANSWER_FORMATS, export_answers, export_pairs

    if args.format in ANSWER_FORMATS:
        written = export_answers(args.db, args.out, args.format, args.evals)
        for entry in written.evaluations:
            print(f"round {entry['round']} {entry['model_key']} ({entry['eval_key']}): {len(entry['files'])} files")
        print(f"{args.format} written to {written.out_dir}; list in {written.manifest}")
        return 0
    done = export_pairs(args.db, args.out, args.pairs, args.format)
    print(f"{done.n_pairs} pairs of {done.pairs_key} written to {done.path}")
    return 0


def _lams(text: str) -> list[float]:
    """"0.5", "0,0.5,0.9" or "0:1:0.05" (both ends included)."""
    if ":" not in text:
        return _floats(text)
    try:
        start, stop, step = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP:STEP, got {text!r}") from None
    if step <= 0 or stop < start:
        raise argparse.ArgumentTypeError(f"expected START <= STOP and STEP > 0, got {text!r}")
    count = int(round((stop - start) / step)) + 1
    return [round(start + i * step, 10) for i in range(count)]


def _floats(text: str) -> list[float]:
    return [float(x) for x in _names(text)]


def _ints(text: str) -> list[int]:
    return [int(x) for x in _names(text)]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def cmd_sql(args) -> int:
    from storage.store import Store

    store = Store(args.db, read_only=True, sandbox=True)  # only the store itself can be read
    try:
        frame = store.df(args.query)
    finally:
        store.close()
    if args.format == "csv":
        print(frame.to_csv(index=False), end="")
    elif args.format == "json":
        print(frame.to_json(orient="records", indent=1, date_format="iso"))
    else:
        print(frame.to_string(index=False, max_colwidth=80))
    return 0


def cmd_status(args) -> int:
    from storage.reports import invalid_prompt_count, stage_status
    from storage.store import Store

    store = Store(args.db, read_only=True)
    try:
        frame, invalid = stage_status(store), invalid_prompt_count(store)
    finally:
        store.close()
    if frame.empty:
        print(f"no stages recorded in {args.db}")
        return 0
    print(frame.to_string(index=False, max_colwidth=60))
    print(f"\n{len(frame)} stages; {int((frame.status == 'complete').sum())} complete; "
          f"{int(frame.n_failed.fillna(0).sum())} failed items; {invalid} invalid prompt rows")
    return 0


def cmd_backup(args) -> int:
    from storage.backup import backup

    copied = backup(args.db, args.dest)
    print(f"backed up {args.db} to {copied.path}: {copied.n_stages} stages, {copied.bytes / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
