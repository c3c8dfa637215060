"""Reports: the engine's activity over a range of days, and analytics at its end, as Prefect artifacts."""

from datetime import UTC, date, datetime, time, timedelta

from prefect import flow
from prefect.runtime import flow_run

from engine.reports import ActivityReport
from engine.settings import EngineSettings
from tasks.reports import activity_report_task, analytics_task


@flow(name="activity-report", log_prints=True)
def activity_report(end: date | None = None, days: int = 7, cohort_days: int = 60) -> ActivityReport:
    """Publish what the live runs did over the last `days` days (messages by channel and fate, segment sizes),
    and analytics as of the end of the last day: journey and delivery funnels, active users, retention.

    Args:
        end: Last day of the report (UTC date), inclusive. Leave empty for the day before the flow run's
            scheduled start, so the scheduled report covers complete days.
        days: Number of days the report covers, ending with `end`; also the days of active users shown.
        cohort_days: Days of first-seen cohorts in the retention table; D30 needs cohorts at least 31 days old.
    """
    last = end or ((flow_run.scheduled_start_time or datetime.now(UTC)).date() - timedelta(days=1))
    settings = EngineSettings()
    report = activity_report_task(settings, last - timedelta(days=days - 1), last)
    analytics_task(settings, datetime.combine(last + timedelta(days=1), time(), UTC), days, cohort_days)
    return report
