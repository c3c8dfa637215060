"""Acceptance: under seeded 429s, 5xx and hangs, reruns leave every ledger row terminal and no request early.

The fakes draw a fault for each arrival of each send key from a seed, so the faults are the same on every run
of the test whatever the threads' order. SendGrid runs on the wall clock: its X-RateLimit-Reset is an epoch
time that the provider layer turns into a wait with the real time. FCM's Retry-After is relative, so FCM runs
on a virtual clock shared with its fake, and minutes of QUOTA_EXCEEDED waits between reruns take no time.
The FCM sender runs without firebase-admin's own 5xx and read-timeout retries (see fcm_endpoint.DEFAULT_RETRIES).
"""

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from engine.dispatch import DispatchCounts
from engine.dispatch_policy import DispatchPolicy
from engine.fakes import FakeFcm, FakeSendGrid
from engine.fakes.chaos import Chaos
from tests.dispatch_world import (
    RecordingClock,
    VirtualClock,
    dispatch,
    email_sender,
    ledger,
    outbox_database,
    planned_rows,
    push_sender,
    sent_keys,
)

MESSAGES = 40
# SendGrid takes a wave of 8 emails in one request and the fake draws one fault per request, so the email test
# needs more messages for as many draws: 160 emails make about 25 requests, and with seed 11 they meet every
# kind of fault (3 hangs, 3 rate limits, 2 unavailable; a fault of each kind on a first arrival, in the first
# pass of waves), which the test asserts rather than assumes.
EMAILS = 160
TERMINAL = {"accepted", "failed", "skipped"}
DEAD = "token-dead"


def rerun_until_settled(
    database: Engine, run: Callable[[str], DispatchCounts], between: Callable[[], None]
) -> Counter[str]:
    """Dispatch again until no row is left to send; the outcomes of every run added up."""
    totals: Counter[str] = Counter()
    for attempt in range(12):
        counts = run(f"run-{attempt}")
        totals.update(counts.outcomes)
        totals["possible_duplicates"] += counts.possible_duplicates
        if {row["status"] for row in ledger(database).values()} <= TERMINAL:
            return totals
        between()
    raise AssertionError(f"not settled after 12 runs: {Counter(row['status'] for row in ledger(database).values())}")


def faults(chaos: Chaos) -> Counter[str]:
    return Counter(fault for _, _, fault in chaos.injected())


def test_sendgrid_chaos_settles_with_nothing_early_lost_or_silently_duplicated(tmp_path: Path):
    database = outbox_database(f"sqlite:///{tmp_path / 'o.db'}", planned_rows("email", EMAILS))
    chaos = Chaos(11, rate_limited=0.1, unavailable=0.1, hang=0.05, wait_seconds=0.2, hang_seconds=0.6)
    clock = RecordingClock()
    policy = DispatchPolicy(
        clock=clock, batch_size=16, wave_size=8, max_attempts=10, max_wait_seconds=2.0, backoff_seconds=0.05,
        max_backoff_seconds=0.5,
    )  # fmt: skip
    with FakeSendGrid(early_grace=0.5) as fake:
        fake.set_chaos(chaos)
        sender = email_sender(fake, timeout=0.3)
        try:
            totals = rerun_until_settled(
                database, lambda run: dispatch(database, "email", sender, policy, run), clock.now
            )
        finally:
            sender.close()
        early, sends = fake.early_requests(), Counter(sent_keys(fake))

    assert min(faults(chaos)[kind] for kind in ("rate_limited", "unavailable", "hang")) >= 1, faults(chaos)
    rows = ledger(database)
    assert totals["accepted"] + totals["skipped"] + totals["failed"] == EMAILS, totals
    assert {row["status"] for row in rows.values()} == {"accepted"}
    assert early == [], [r.timestamp for r in early]
    assert set(sends) == set(rows), "a message the ledger accepted never reached the provider"
    # Only a timeout (a chaos hang, or a slow answer on a busy machine) may duplicate, and the counts say so.
    twice = {key for key, n in sends.items() if n > 1}
    assert sum(sends[key] - 1 for key in twice) <= totals["possible_duplicates"], (twice, totals)


def test_fcm_chaos_settles_with_dead_tokens_buried_and_nothing_early(tmp_path: Path):
    database = outbox_database(
        f"sqlite:///{tmp_path / 'o.db'}", planned_rows("push", MESSAGES, recipients={5: DEAD, 20: DEAD, 35: DEAD})
    )
    chaos = Chaos(5, rate_limited=0.1, unavailable=0.1, hang=0.05, wait_seconds=2, hang_seconds=0.6)
    clock = VirtualClock()
    policy = DispatchPolicy(
        clock=clock, batch_size=16, wave_size=8, max_attempts=10, max_wait_seconds=10.0, backoff_seconds=0.05
    )
    with FakeFcm(clock=clock.epoch, early_grace=0.5) as fake:
        fake.unregister(DEAD)
        fake.set_chaos(chaos)
        sender = push_sender(fake, tmp_path, timeout=0.3)
        try:
            totals = rerun_until_settled(
                database, lambda run: dispatch(database, "push", sender, policy, run), lambda: clock.advance(61)
            )
        finally:
            sender.close()
        early, sends = fake.early_requests(), Counter(sent_keys(fake))
        unregistered_answers = [r for r in fake.received("/v1/") if r.status == 404]

    assert min(faults(chaos)[kind] for kind in ("rate_limited", "unavailable", "hang")) >= 1, faults(chaos)
    rows = ledger(database)
    assert totals["accepted"] + totals["skipped"] + totals["failed"] == MESSAGES, totals
    assert early == [], [(r.timestamp, r.body["message"]["data"]["send_key"]) for r in early]
    to_dead = [(row["status"], row["reason"] or row["error_code"]) for row in rows.values() if row["recipient"] == DEAD]
    assert (
        set(to_dead) <= {("failed", "UNREGISTERED"), ("skipped", "unregistered")}
        and ("skipped", "unregistered") in to_dead
    )
    assert len(unregistered_answers) == to_dead.count(("failed", "UNREGISTERED"))
    assert {row["status"] for row in rows.values() if row["recipient"] != DEAD} == {"accepted"}
    # Only a timeout (a chaos hang, or a slow answer on a busy machine) may duplicate, and the counts say so.
    twice = {key for key, n in sends.items() if n > 1}
    assert sum(sends[key] - 1 for key in twice) <= totals["possible_duplicates"], (twice, totals)
