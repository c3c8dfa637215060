"""The Prefect task of the activity report: read the run history, publish it."""

from datetime import date

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from engine.db import connect
from engine.reports import ActivityReport, activity_report
from engine.settings import EngineSettings


@task(cache_policy=NO_CACHE)
def activity_report_task(settings: EngineSettings, start: date, end: date) -> ActivityReport:
    report = activity_report(connect(settings.database), start=start, end=end)
    create_markdown_artifact(
        key=f"activity-{start:%Y-%m-%d}-{end:%Y-%m-%d}",
        markdown=report.markdown(),
        description=f"Engine activity {start}..{end}",
    )
    return report
