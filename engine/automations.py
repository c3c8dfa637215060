"""Prefect automations the engine relies on, as code: `python -m engine.automations` creates or updates them.

One for now: zombie runs. A flow run whose process dies with its machine (OOM kill, lost VM, evicted pod)
reports nothing, so Prefect keeps showing it Running, the deployment's one-at-a-time concurrency slot stays
taken and the next scheduled run queues behind it forever. Flow runs started by a worker send a
`prefect.flow-run.heartbeat` event every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (180 by default); this
automation marks a run Crashed when it has sent no event at all for `missed` heartbeats. Crashed releases the
slot so the queue moves again; rerunning the day resumes from the ledger (nothing is sent twice). The run
history keeps that run as `running`: the flows' `on_crashed` hook lived in the process that died.

A worker that is still alive reports the death of a flow run's process itself (Crashed, "Process exited with
status code -9"); this automation is for the case where nobody is left to report: the worker died too.

This is Prefect's documented zombie automation (docs: "How to detect and respond to zombie flows"), shipped
here so a new server gets it with one command instead of by hand in the UI.
"""

import argparse
import json
from collections.abc import Sequence
from datetime import timedelta

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.settings import get_current_settings

ZOMBIE_AUTOMATION = "nudge: crash zombie flow runs"
MISSED_HEARTBEATS = 3


def zombie_automation(heartbeat_seconds: int, missed: int = MISSED_HEARTBEATS) -> AutomationCore:
    """After a flow run's heartbeat, expect any event of that run within `missed` heartbeats, or crash it.

    Any flow run event resets the clock (a heartbeat or a state change, whatever its state's name), so a run
    that finished is never touched, and the trigger is evaluated per flow run.

    Args:
        heartbeat_seconds: The workers' PREFECT_FLOWS_HEARTBEAT_FREQUENCY.
        missed: How many heartbeats in a row may go missing before the run is declared dead.
    """
    if heartbeat_seconds < 30 or missed < 2:
        raise ValueError("heartbeats come at least 30 s apart, and one late heartbeat is no crash: missed >= 2")
    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=(
            f"Marks a flow run Crashed when it has sent no event for {missed} heartbeats "
            f"({missed} x {heartbeat_seconds} s): its process is gone. Shipped by engine/automations.py."
        ),
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=missed * heartbeat_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {missed * heartbeat_seconds} s: the flow run's process is gone.",
            )
        ],
    )


def apply(automation: AutomationCore) -> str:
    """Create the automation, or update the one of the same name: running this twice leaves one automation.

    Returns:
        What was done and the automation's id, for the operator's terminal.
    """
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(automation.name)
        if existing:
            client.update_automation(existing[0].id, automation)
            return f"updated {automation.name!r} ({existing[0].id})"
        return f"created {automation.name!r} ({client.create_automation(automation)})"


def main(argv: Sequence[str] | None = None) -> None:
    """Create or update the engine's automations on the Prefect server at PREFECT_API_URL."""
    parser = argparse.ArgumentParser(prog="python -m engine.automations", description=main.__doc__)
    parser.add_argument(
        "--heartbeat-seconds",
        type=int,
        default=get_current_settings().flows.heartbeat_frequency,
        help="the workers' PREFECT_FLOWS_HEARTBEAT_FREQUENCY (default: this shell's, else Prefect's 180)",
    )
    parser.add_argument(
        "--missed", type=int, default=MISSED_HEARTBEATS, help=f"heartbeats missed before Crashed ({MISSED_HEARTBEATS})"
    )
    parser.add_argument(
        "--print", action="store_true", help="print the automation as JSON (for `prefect automation create -f`)"
    )
    args = parser.parse_args(argv)
    if args.heartbeat_seconds is None:
        parser.error("flow run heartbeats are off (PREFECT_FLOWS_HEARTBEAT_FREQUENCY unset): zombies go unseen")
    automation = zombie_automation(args.heartbeat_seconds, args.missed)
    if args.print:
        print(json.dumps(automation.model_dump(mode="json"), indent=2))
        return
    print(apply(automation))


if __name__ == "__main__":
    main()
