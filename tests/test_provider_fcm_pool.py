"""FcmPushPool: pushes from worker processes through the real firebase-admin, over HTTP, to the loopback fake."""

import threading
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import psutil
import pytest

from engine.dispatch_policy import DispatchPolicy
from engine.fakes import FakeFcm
from engine.providers.fcm_pool import FcmPushPool
from engine.providers.fcm_push import FcmPushSender
from engine.providers.messages import Push
from tests.dispatch_world import RecordingClock, dispatch, outbox_database, planned_rows, sent_keys, statuses
from tests.fcm_fake import fresh_fcm_record, module_fake_fcm

__all__ = ["fresh_fcm_record", "module_fake_fcm"]


@pytest.fixture(scope="module")
def account(fake: FakeFcm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake.write_service_account(tmp_path_factory.mktemp("fcm") / "service-account.json")


@pytest.fixture(scope="module")
def pool(fake: FakeFcm, account: Path) -> Iterator[FcmPushPool]:
    sender = FcmPushPool(account, 2, endpoint=fake.url)
    yield sender
    sender.close()


def pushes(count: int, prefix: str = "p", gone: frozenset[int] = frozenset()) -> list[Push]:
    """Pushes to tokens of their own; those at the `gone` positions go to tokens the fake calls unregistered."""
    return [
        Push(f"{prefix}-{i}", "run-7", f"gone-{i}" if i in gone else f"{prefix}-token-{i}", "Bread", "A coupon")
        for i in range(count)
    ]


def workers() -> list[psutil.Process]:
    """This process's pool workers (spawned interpreters), not the fake's threads or pytest's own helpers."""
    return [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]


def test_a_pool_answers_like_one_sender_each_push_sent_once_from_its_workers(
    fake: FakeFcm, pool: FcmPushPool, account: Path
) -> None:
    gone = frozenset({7, 150})
    fake.unregister(*(f"gone-{i}" for i in gone))
    wave = pushes(301, gone=gone)

    outcomes = pool.send(wave)

    alone = FcmPushSender(account, endpoint=fake.url)
    try:
        expected = alone.send(pushes(301, "alone", gone))
    finally:
        alone.close()
    assert [o.send_key for o in outcomes] == [p.send_key for p in wave]
    shape = [(o.status, o.error_code, o.invalid_recipient) for o in outcomes]
    assert shape == [(o.status, o.error_code, o.invalid_recipient) for o in expected]
    assert [i for i, s in enumerate(shape) if s == ("failed", "UNREGISTERED", True)] == sorted(gone)
    assert len(fake.received("/v1/")) == 2 * 301, "each push sent once"
    assert sorted(sent_keys(fake)) == sorted(o.send_key for o in outcomes + expected if o.status == "accepted")
    assert len(workers()) == 2


def test_a_worker_dying_mid_wave_raises_and_the_next_wave_goes_out(tmp_path: Path) -> None:
    # A fake of its own: the hung requests of the dead workers are answered (and recorded) after the hang, which
    # would land in the next test's record; stopping this fake ends them.
    others = {w.pid for w in workers()}  # the module's pool keeps its workers
    with FakeFcm() as fake:
        pool = FcmPushPool(fake.write_service_account(tmp_path / "service-account.json"), 2, endpoint=fake.url)
        try:
            pool.send(pushes(4, "warm"))
            fake.hang_next(3, count=4)
            killer = threading.Timer(1.0, lambda: [w.kill() for w in workers() if w.pid not in others])
            killer.start()

            with pytest.raises(BrokenProcessPool):
                pool.send(pushes(4, "doomed"))
            killer.join()
            outcomes = pool.send(pushes(4, "after"))
        finally:
            pool.close()

        assert [o.status for o in outcomes] == ["accepted"] * 4
        assert sorted(k for k in sent_keys(fake) if k.startswith("after")) == [f"after-{i}" for i in range(4)]


def test_dispatch_through_a_pool_sends_each_key_once(fake: FakeFcm, pool: FcmPushPool, tmp_path: Path) -> None:
    database = outbox_database(f"sqlite:///{tmp_path / 'nudge.db'}", planned_rows("push", 45))
    policy = DispatchPolicy(clock=RecordingClock(), batch_size=20, wave_size=7)

    counts = dispatch(database, "push", pool, policy)

    assert counts.outcomes["accepted"] == 45, (counts, {k: v for k, v in statuses(database).items() if v != "accepted"})
    assert set(statuses(database).values()) == {"accepted"}
    assert sorted(sent_keys(fake)) == sorted(f"key-{i}" for i in range(45))


def test_a_pool_of_one_process_is_refused(account: Path) -> None:
    with pytest.raises(ValueError, match="at least 2 processes"):
        FcmPushPool(account, 1)
