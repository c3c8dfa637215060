"""The Prefect task of the activity report: read the run history, publish it."""

from datetime import date
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from engine.db import connect
from engine.report_html import activity_html
from engine.reports import ActivityReport, activity_report
from engine.settings import EngineSettings


@task(cache_policy=NO_CACHE)
def activity_report_task(settings: EngineSettings, start: date, end: date) -> ActivityReport:
    report = activity_report(connect(settings.database), start=start, end=end)
    key = f"activity-{start:%Y-%m-%d}-{end:%Y-%m-%d}"
    description = f"Engine activity {start}..{end}"
    create_markdown_artifact(key=key, markdown=report.markdown(), description=description)
    publish_html(settings.home / "reports" / f"{key}.html", activity_html(report), key=key, description=description)
    return report


def publish_html(page: Path, html: str, *, key: str, description: str) -> None:
    """Write a self-contained HTML report under the engine home and link it from the run's artifacts: one file
    a person can open, mail or archive, charts included, with nothing fetched from anywhere."""
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(html, encoding="utf-8")
    create_link_artifact(
        key=f"{key}-html",
        link=page.resolve().as_uri(),
        link_text=f"{page.name} (HTML with charts)",
        description=description,
    )
