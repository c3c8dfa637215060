"""Reports: the engine's activity over a range of days, published as a Prefect artifact."""

from datetime import UTC, date, datetime, timedelta

from prefect import flow
from prefect.runtime import flow_run

from engine.reports import ActivityReport
from engine.settings import EngineSettings
from tasks.reports import activity_report_task


@flow(name="activity-report", log_prints=True)
def activity_report(end: date | None = None, days: int = 7) -> ActivityReport:
    """Publish what the live runs did over the last `days` days: messages by channel and fate, segment sizes.

    Args:
        end: Last day of the report (UTC date), inclusive. Leave empty for the day before the flow run's
            scheduled start, so the scheduled report covers complete days.
        days: Number of days the report covers, ending with `end`.
    """
    last = end or ((flow_run.scheduled_start_time or datetime.now(UTC)).date() - timedelta(days=1))
    return activity_report_task(EngineSettings(), last - timedelta(days=days - 1), last)
