"""What every engine flow does at its edges: pick its as_of, record its failure, send under the outbox limit."""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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


class OutboxBusyError(RuntimeError):
    """The outbox limit stayed taken longer than the run may wait for it."""

    def __init__(self, name: str, waited: float) -> None:
        super().__init__(
            f"the outbox limit {name!r} stayed taken for {waited:.0f} s: another run is sending or backfilling "
            f"(see Concurrency in the Prefect UI), or a process killed while holding it left it taken (a local "
            f"Prefect server forgets the lease when it stops). When no run of this engine is active, free it with "
            f"`prefect gcl update {name} --active-slots 0` and rerun this day: nothing already sent is sent again."
        )


@contextmanager
def outbox_slot(settings: EngineSettings) -> Iterator[None]:
    """Hold the outbox limit's one slot, waiting at most `settings.outbox_wait_seconds` for it."""
    slot = concurrency(settings.outbox_limit, occupy=1, strict=True, timeout_seconds=settings.outbox_wait_seconds)
    with ExitStack() as stack:
        try:
            stack.enter_context(slot)
        except TimeoutError as error:  # only the wait: a TimeoutError of the work inside is the caller's
            raise OutboxBusyError(settings.outbox_limit, settings.outbox_wait_seconds) from error
        yield


def dispatch_under_outbox_limit(ctx: RunContext) -> dict[str, DispatchCounts]:
    """Send under the outbox limit, so a live backfill marking a past window skipped never races a send of it."""
    if ctx.dry_run:
        return {}
    ensure_outbox_limit_task(ctx.settings.outbox_limit)
    with outbox_slot(ctx.settings):
        return dispatch_task(ctx)
