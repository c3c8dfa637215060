"""Pushes from several processes: firebase-admin spends ~1.6 ms of CPU per push in the sending process.

`send_each` makes one HTTP request per message through requests, urllib3 and http.client, all under one GIL:
a process sends at most ~600 pushes a second however many threads it starts (bench/dispatch.py measures it;
`send_each_async` costs twice the CPU per push here). `FcmPushPool` splits each wave across worker processes,
each with an `FcmPushSender` of its own, so a large send uses every core.

Workers start with `spawn` (forking a process that runs Prefect's threads is unsafe) on the first wave, so a run
that sends no push starts none. A worker that dies mid-wave makes `send` raise `BrokenProcessPool`: the wave
stays in doubt, as after a crash of the dispatching process, and the pool starts fresh workers for the next.
"""

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from engine.providers.fcm_push import FcmPushSender
from engine.providers.messages import Outcome, Push, require_unique_send_keys

_worker_sender: FcmPushSender | None = None


class FcmPushPool:
    """An FCM push sender whose waves go out from `processes` worker processes at once, in equal parts."""

    def __init__(
        self, service_account_file: Path, processes: int, endpoint: str | None = None, *, timeout: float = 10.0
    ) -> None:
        if processes < 2:
            raise ValueError(f"a pool needs at least 2 processes, not {processes}: send from this one instead")
        # Fails here, in the caller's process, on a file that is no service account, rather than in each worker.
        FcmPushSender(service_account_file, endpoint, timeout=timeout).close()
        self._processes = processes
        self._worker_args = (service_account_file, endpoint, timeout)
        self._executor = self._new_executor()

    def send(self, pushes: Sequence[Push]) -> list[Outcome]:
        """One Outcome per push, in the order given, as `FcmPushSender.send` returns them."""
        require_unique_send_keys([p.send_key for p in pushes])
        size = -(-len(pushes) // self._processes)
        parts = [list(pushes[start : start + size]) for start in range(0, len(pushes), size)] if pushes else []
        try:
            futures = [self._executor.submit(_send, part) for part in parts]
            return [outcome for future in futures for outcome in future.result()]
        except BrokenProcessPool:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()
            raise

    def close(self) -> None:
        """Stop the workers; their SDK apps and connections end with them."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=self._worker_args,
        )


def _start_worker(service_account_file: Path, endpoint: str | None, timeout: float) -> None:
    global _worker_sender
    _worker_sender = FcmPushSender(service_account_file, endpoint, timeout=timeout)


def _send(pushes: list[Push]) -> list[Outcome]:
    if _worker_sender is None:
        raise RuntimeError("an FCM pool worker sends only after its initializer built its sender")
    return _worker_sender.send(pushes)
