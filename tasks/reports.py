"""The Prefect tasks of the reports: the activity report (the run history) and analytics, each published."""

from datetime import date, datetime, timedelta
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from engine.analytics import active_users, retention, segment_trends
from engine.db import connect
from engine.definitions import load_definitions
from engine.funnels import delivery_funnel, journey_funnel
from engine.pipeline import behaviour_at
from engine.render import TemplateStore
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


@task(cache_policy=NO_CACHE)
def analytics_task(settings: EngineSettings, as_of: datetime, days: int, cohort_days: int) -> dict[str, str]:
    """Publish three markdown artifacts for `as_of`: funnels, engagement, segment sizes; returns them by key."""
    definitions = load_definitions(settings.definitions_dir, TemplateStore(settings.templates_dir))
    journeys = list(definitions.journeys.values())
    events = behaviour_at(settings, as_of).events
    with connect(settings.database).connect() as conn:
        funnels = [journey_funnel(conn, journey, as_of=as_of) for journey in journeys if journey.status != "draft"]
        deliveries = delivery_funnel(conn, events, journeys, as_of=as_of)
        sizes = segment_trends(conn, start=as_of.date() - timedelta(days=days - 1), end=as_of.date())
    day = f"{as_of:%Y-%m-%d}"
    published = {
        f"analytics-funnels-{day}": "\n".join([*(funnel.markdown() for funnel in funnels), deliveries.markdown()]),
        f"analytics-engagement-{day}": "\n".join(
            [
                active_users(events, as_of=as_of, days=days).markdown(),
                retention(events, as_of=as_of, days=cohort_days).markdown(),
            ]
        ),
        f"analytics-segments-{day}": sizes.markdown(),
    }
    for key, markdown in published.items():
        create_markdown_artifact(key=key, markdown=markdown, description=f"Analytics as of {as_of:%Y-%m-%d %H:%M} UTC")
    return published
