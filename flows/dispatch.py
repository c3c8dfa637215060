"""Dispatch only: send what has come due since the last run, between daily runs. No segment or journey work.

Messages held for the user's quiet hours are planned by the daily run with a `not_before`; retryable ones carry
their next attempt time. This flow, scheduled hourly, sends those whose time has come, through the daily run's
own dispatch task and ledger, so a message is still sent once however many dispatchers run.
"""

from datetime import datetime
from uuid import uuid4

from prefect import flow
from prefect.runtime import flow_run

from engine.dispatch import DispatchCounts
from engine.pipeline import RunContext
from engine.settings import EngineSettings
from flows.edges import dispatch_under_outbox_limit, resolve_as_of


@flow(name="dispatch-due", log_prints=True)
def dispatch_due(as_of: datetime | None = None) -> dict[str, DispatchCounts]:
    """Send the outbox messages that are due: held ones whose quiet hours ended, and retries whose wait is over.

    Args:
        as_of: The instant treated as now, in UTC: messages planned at or before it whose hold ended by it are
            sent. Leave empty to use the flow run's scheduled start time.
    """
    settings = EngineSettings()
    ctx = RunContext(run_id=str(flow_run.id or uuid4()), as_of=resolve_as_of(as_of), dry_run=False, settings=settings)
    return dispatch_under_outbox_limit(ctx)
