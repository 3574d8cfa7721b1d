"""The report's files: `report.md` (or also `report.html`), `sweep.csv` and the PNG plots, from a DuckDB file."""
from __future__ import annotations

from pathlib import Path

from report.data import load_report_data, sweep_deltas
from report.plots import write_plots
from report.tables import markdown_to_html, summary_markdown
from storage.store import Store, open_store


def write_report(db: str, out_dir: str | Path, *, read_only: bool = True, html: bool = False) -> Path:
    """Write `report.md` (and `report.html` with `html`), `sweep.csv` and the PNG plots into `out_dir`.

    Returns the report file. `read_only=False` reads through the process's shared writing connection
    (inside a pipeline run).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(db, read_only=True) if read_only else open_store(db)
    try:
        data = load_report_data(store)
    finally:
        if read_only:
            store.close()
    sweep_deltas(data).to_csv(out / "sweep.csv", index=False)
    markdown = summary_markdown(data, write_plots(data, out))
    (out / "report.md").write_text(markdown)
    if not html:
        return out / "report.md"
    (out / "report.html").write_text(markdown_to_html(markdown))
    return out / "report.html"
