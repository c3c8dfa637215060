"""The activity report reads what live runs recorded: completed, non-dry runs in the range, nothing else."""

import json
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import insert

from engine.db import connect
from engine.reports import activity_report
from models.tables import Run, SegmentSize


def at(day: int) -> datetime:
    return datetime(2026, 10, day, 6, tzinfo=UTC)


def record(url: str) -> None:
    runs = [
        (f"r{day}" + ("-dry" if dry else ""), at(day), dry, status, {"email_sent": day, "push_skipped": 2})
        for day, dry, status in ((1, False, "completed"), (2, False, "completed"), (2, True, "completed"),
                                 (3, False, "failed"), (4, False, "completed"))
    ]  # fmt: skip
    with connect(url).begin() as conn:
        conn.execute(
            insert(Run.__table__),
            [
                {"run_id": run_id, "as_of": as_of, "dry_run": dry, "status": status, "started_at": as_of,
                 "definitions": "{}", "counts": json.dumps({"messages": messages})}
                for run_id, as_of, dry, status, messages in runs
            ],
        )  # fmt: skip
        conn.execute(
            insert(SegmentSize.__table__),
            [
                {"segment": name, "as_of": at(day), "run_id": f"r{day}", "definition_version": "v", "size": size,
                 "entered": 0, "exited": 0}
                for day in (1, 2, 4) for name, size in (("loyalists", 10 * day), ("cart_abandoners", day))
            ],
        )  # fmt: skip


def test_the_report_holds_completed_live_runs_of_the_range(database_url: str):
    record(database_url)
    report = activity_report(connect(database_url), start=date(2026, 10, 1), end=date(2026, 10, 3))

    assert [(day.as_of, day.messages["email_sent"]) for day in report.days] == [(at(1), 1), (at(2), 2)]
    assert report.days[1].segments == {"cart_abandoners": 2, "loyalists": 20}
    markdown = report.markdown()
    assert "| as_of | email_sent | push_skipped |" in markdown
    assert "| 2026-10-02 06:00 | 2 | 2 |" in markdown and "| 2026-10-02 06:00 | 2 | 20 |" in markdown
    assert "| 2026-10-03" not in markdown and "| 2026-10-04" not in markdown


def test_the_report_flow_publishes_the_artifact(prefect_harness, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.reports import activity_report as report_flow

    url = f"sqlite:///{tmp_path / 'nudge.db'}"
    record(url)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NUDGE_HOME", str(tmp_path))
        patch.setenv("NUDGE_DATABASE_URL", url)
        report = report_flow(end=date(2026, 10, 4), days=4)

    assert [day.as_of for day in report.days] == [at(1), at(2), at(4)]
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["activity-2026-10-01-2026-10-04"])), limit=1
        )
    assert artifact.data == report.markdown()
    keys = [f"analytics-{name}-2026-10-05" for name in ("funnels", "engagement", "segments")]
    with get_client(sync_client=True) as client:
        analytics = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    assert {artifact.key for artifact in analytics} == set(keys)
    assert "abandoned_cart" in next(a.data for a in analytics if a.key == keys[0])
