"""One process of the full-day scenario: the real `daily-campaign` flow, through Prefect, for given instants.

`python -m bench.day_run SPEC_JSON` runs the flow once per `as_of` in the spec (the engine's settings and the
fakes' addresses come from the environment the parent sets), then prints one JSON line about the last run: the
flow run's wall time as Prefect recorded it, each task run's start and end, the RSS of the process and its
children (push workers, a local Prefect server) sampled through the run (so each stage gets its own peak), and
what the run counted. With `profile` set, the last run is also profiled (cProfile, the flow's thread: Prefect
runs a sync flow's tasks in it) into that file.
"""

from __future__ import annotations

import cProfile
import json
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psutil

from bench.timing import descendants_total

_SAMPLE_SECONDS = 0.05


@dataclass
class RssSampler:
    """The resident set size of the process and its children every 50 ms, stamped with the wall clock, on a
    daemon thread."""

    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> RssSampler:
        process = psutil.Process()

        def sample() -> None:
            while not self._stop.is_set():
                self.samples.append((time.time(), _tree_rss(process)))
                self._stop.wait(_SAMPLE_SECONDS)

        threading.Thread(target=sample, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()

    def peak(self, start: float, end: float) -> int:
        """The highest RSS sampled in [start, end], or at the sample nearest before start for a short span."""
        inside = [rss for at, rss in self.samples if start <= at <= end]
        before = [rss for at, rss in self.samples if at < start]
        return max(inside or before[-1:] or [0])


def _tree_rss(process: psutil.Process) -> int:
    return process.memory_info().rss + int(descendants_total(lambda child: child.memory_info().rss))


def run_days(instants: list[datetime], profile: str | None) -> dict[str, Any]:
    """Run the flow for each instant; the report of the last one."""
    from flows.daily import daily_campaign

    rss_before = psutil.Process().memory_info().rss
    for as_of in instants[:-1]:
        daily_campaign(as_of=as_of, return_state=True).result()
    profiler = cProfile.Profile() if profile else None
    with RssSampler() as sampler:
        if profiler is not None:
            profiler.enable()
        state = daily_campaign(as_of=instants[-1], return_state=True)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
    summary = state.result()
    return {
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, sampler.peak(0, time.time())),
        **_timeline(state.state_details.flow_run_id, sampler),
        "summary": json.loads(json.dumps(summary.counts(), default=_plain)),
    }


def _timeline(flow_run_id: Any, sampler: RssSampler) -> dict[str, Any]:
    """The flow run's and its task runs' times as the Prefect server recorded them, with each one's peak RSS."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    tasks = [
        {
            "name": run.name.rsplit("-", 1)[0],
            "start": run.start_time.timestamp(),
            "end": run.end_time.timestamp(),
            "peak_rss_bytes": sampler.peak(run.start_time.timestamp(), run.end_time.timestamp()),
        }
        for run in task_runs
        if run.start_time is not None and run.end_time is not None
    ]
    start, end = flow_run.start_time.timestamp(), flow_run.end_time.timestamp()
    return {"flow_start": start, "flow_end": end, "tasks": sorted(tasks, key=lambda t: t["start"])}


def _plain(value: Any) -> Any:
    """JSON for the summary's dataclasses and instants."""
    if isinstance(value, datetime):
        return value.isoformat()
    return vars(value)


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    instants = [datetime.fromisoformat(text) for text in spec["as_of"]]
    print(json.dumps(run_days(instants, spec.get("profile"))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
