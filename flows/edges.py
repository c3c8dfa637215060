"""What every engine flow does at its edges: pick its as_of, record its failure, send under the outbox limit."""

from datetime import UTC, datetime

from prefect.client.schemas.objects import FlowRun, State
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run

from engine.db import connect
from engine.dispatch import DispatchCounts
from engine.pipeline import RunContext
from engine.run_log import mark_failed
from engine.settings import EngineSettings
from tasks.run import dispatch_task, ensure_outbox_limit_task


def record_failure(_flow: object, flow_run_: FlowRun, state: State) -> None:
    """A run that raised is marked failed in the run history, with the error, so `nudge runs` shows it (and a
    backfill knows the day never completed)."""
    mark_failed(connect(EngineSettings().database), flow_run_id=str(flow_run_.id), error=str(state.message))


def resolve_as_of(as_of: datetime | None) -> datetime:
    """An explicit as_of wins; otherwise the scheduled time, so a late-starting scheduled run is still exact."""
    chosen = as_of or flow_run.scheduled_start_time or datetime.now(UTC)
    if chosen.tzinfo is None:
        chosen = chosen.replace(tzinfo=UTC)
    return datetime.fromtimestamp(chosen.timestamp(), UTC)


def dispatch_under_outbox_limit(ctx: RunContext) -> dict[str, DispatchCounts]:
    """Send under the outbox limit, so a live backfill marking a past window skipped never races a send of it."""
    if ctx.dry_run:
        return {}
    ensure_outbox_limit_task(ctx.settings.outbox_limit)
    with concurrency(ctx.settings.outbox_limit, occupy=1, strict=True):
        return dispatch_task(ctx)
