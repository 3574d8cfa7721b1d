"""The `csr-rescore` flow: new reward settings (λ, mode, filters) over stored candidates; no VLM, no CLIP."""
from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.config import RunConfig, given_or_loaded
from flows.rescoring import as_task, rescore_candidates, with_reference
from report.curve import curve_markdown, lambda_curve
from storage.store import open_store


@flow(name="csr-rescore", log_prints=True)
def rescore(config_files: list[str] | None = None, overrides: list[str] | None = None, round_: int | None = None,
            tree_key: str | None = None, config: RunConfig | None = None,
            lams: list[float] | None = None) -> list[dict]:
    """Recompute calibrated rewards and pairs for stored candidates, for `lams` (default: reward.lam)."""
    cfg = given_or_loaded(config, config_files, overrides)
    results = rescore_candidates(cfg, with_reference(lams) if lams else None, round_, tree_key, run=as_task)
    if not results:
        print("nothing to rescore: no complete candidates with relevance scores in", cfg.db)
    elif lams and len(lams) > 1:
        create_markdown_artifact(markdown=curve_markdown(lambda_curve(open_store(cfg.db), results)),
                                 key="csr-lambda-curve", description="CSR λ curve over stored candidates")
    return results
