"""Both provider fakes in a process of their own, so that they do not compete with the sender for one GIL.

`python -m bench.fake_process DIR` starts `FakeProviders` without request files (the benchmark measures the
sender, not the fakes' disk), prints the environment that points senders at them as one JSON line, and on
SIGTERM prints one more JSON line: how many sends each fake accepted, which the benchmark checks against the
ledger. `FakeProcess` runs it from the benchmark.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bench.workload import REPO_ROOT
from engine.fakes import FakeProviders

_START_TIMEOUT = 60.0


class FakeProcess:
    """The fakes in a child process; `env` once started, `accepted` once stopped."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.env: dict[str, str] = {}
        self.accepted: dict[str, int] = {}
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> Self:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_process", str(self.directory)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        timer = threading.Timer(_START_TIMEOUT, self._process.kill)  # never wait forever on a broken child
        timer.start()
        try:
            line = self._process.stdout.readline() if self._process.stdout else ""
        finally:
            timer.cancel()
        if not line:
            self._process.kill()
            self._process.communicate()
            self._process = None
            raise RuntimeError("the fake process exited (or hung) before serving")
        self.env = json.loads(line)
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        out, _ = self._process.communicate(timeout=30)
        lines = out.strip().splitlines()
        self.accepted = json.loads(lines[-1]) if lines else {}
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None and exc_type is not None:
            self._process.kill()
            self._process.communicate()
            self._process = None
        self.stop()


def accepted_sends(fakes: FakeProviders) -> dict[str, int]:
    """How many messages each fake accepted: SendGrid takes many emails in one request (one personalization
    each), so its count is of emails accepted, not of 2xx answers; FCM takes one message a request."""
    return {
        "email": len(fakes.sendgrid.accepted()),
        "push": sum(r.status == 200 for r in fakes.fcm.received("/v1/")),
    }


def main(argv: list[str] | None = None) -> None:
    directory = Path((argv if argv is not None else sys.argv[1:])[0])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeProviders(directory, record=False) as fakes:
        print(json.dumps(fakes.env()), flush=True)
        stop.wait()
        counts: dict[str, Any] = accepted_sends(fakes)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
