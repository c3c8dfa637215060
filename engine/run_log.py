"""The run history: which as_of each run served, what it saw, what it did, and how it ended."""

import json
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update

from engine.db import upsert
from models.tables import Run

_RUNS = Run.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LiveRun:
    """A run that wrote live state (not a dry run): what backfills and replays plan around."""

    run_id: str
    as_of: datetime
    status: str  # running | completed | failed


def start_run(
    database: Engine,
    *,
    run_id: str,
    flow_run_id: str | None,
    as_of: datetime,
    dry_run: bool,
    started_at: datetime,
    definitions: dict[str, str],
) -> None:
    row = {
        "run_id": run_id,
        "flow_run_id": flow_run_id,
        "as_of": as_of,
        "dry_run": dry_run,
        "status": "running",
        "started_at": started_at,
        "finished_at": None,
        "snapshot_fingerprint": "",
        "definitions": json.dumps(definitions, sort_keys=True),
        "counts": "{}",
    }
    with database.begin() as conn:
        upsert(conn, _RUNS, [row])


def finish_run(
    database: Engine, *, run_id: str, status: str, finished_at: datetime, fingerprint: str, counts: Any
) -> None:
    with database.begin() as conn:
        conn.execute(
            update(_RUNS)
            .where(_RUNS.c.run_id == run_id)
            .values(
                status=status,
                finished_at=finished_at,
                snapshot_fingerprint=fingerprint,
                counts=json.dumps(_plain(counts), sort_keys=True),
            )
        )


def mark_failed(database: Engine, *, flow_run_id: str, error: str) -> None:
    with database.begin() as conn:
        conn.execute(
            update(_RUNS)
            .where(_RUNS.c.flow_run_id == flow_run_id, _RUNS.c.status == "running")
            .values(status="failed", counts=json.dumps({"error": error}))
        )


def list_runs(database: Engine, *, limit: int = 20) -> list[dict[str, Any]]:
    with database.connect() as conn:
        rows = conn.execute(select(_RUNS).order_by(_RUNS.c.started_at.desc()).limit(limit)).mappings().all()
    return [dict(row) for row in rows]


def live_runs(database: Engine) -> list[LiveRun]:
    """Every non-dry run in as_of order, whatever its status: a failed run may have written part of its day."""
    query = (
        select(_RUNS.c.run_id, _RUNS.c.as_of, _RUNS.c.status)
        .where(_RUNS.c.dry_run.is_(False))
        .order_by(_RUNS.c.as_of, _RUNS.c.started_at, _RUNS.c.run_id)
    )
    with database.connect() as conn:
        return [LiveRun(run_id, as_of, status) for run_id, as_of, status in conn.execute(query).all()]


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
