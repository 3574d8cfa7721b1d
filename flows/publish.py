"""The run report as a Prefect task: the summary tables (from `report/`) as the run's markdown artifact."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from report.data import load_report_data
from report.tables import summary_markdown
from report.write import write_report
from storage.store import open_store


@task(name="publish-report", cache_policy=NONE, persist_result=False)
def publish_report(db: str, out_dir: str | None = None) -> str:
    """Publish the report's tables as the run's Prefect markdown artifact (and write the files if asked)."""
    from prefect.artifacts import create_markdown_artifact

    if out_dir is not None:
        write_report(db, out_dir, read_only=False)
    markdown = summary_markdown(load_report_data(open_store(db)))
    create_markdown_artifact(markdown=markdown, key="csr-report", description="CSR evaluation summary")
    return markdown
