"""Wall and CPU time of a call, and the best of several calls."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil


@dataclass(frozen=True)
class Timing:
    """Wall seconds, and CPU seconds of the whole process (every thread, DuckDB's included).

    CPU time is the steadier figure on a shared machine: another process competing for the 2 cores stretches
    wall time but hardly the work done.
    """

    wall: float
    cpu: float

    def fields(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}seconds": self.wall, f"{prefix}cpu_seconds": self.cpu}


def timed(work: Callable[[], Any]) -> tuple[Timing, Any]:
    """One call's timing and result."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = work()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), result


def best_of(repeat: int, work: Callable[[], Any]) -> tuple[Timing, Any]:
    """The fastest (by wall time) of `repeat` calls and its result: the least disturbed measurement."""
    runs = [timed(work) for _ in range(repeat)]
    return min(runs, key=lambda run: run[0].wall)


def child_result(module: str, arguments: list[str], cwd: Path) -> dict[str, Any]:
    """Run `python -m module arguments` in a fresh process and return the JSON object its last output line holds:
    each phase pays its own imports and its peak memory is its own."""
    done = subprocess.run(
        [sys.executable, "-m", module, *arguments], cwd=cwd, stdout=subprocess.PIPE, text=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def descendants_total(measure: Callable[[psutil.Process], float]) -> float:
    """`measure` summed over this process's live descendants (fakes' process, push workers, Prefect's server);
    one that exits while being read counts as nothing."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            total += measure(child)
        except psutil.NoSuchProcess:
            continue
    return total
