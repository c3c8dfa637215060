"""Planned sends become one outbox row per address, or one skip with its reason."""

from datetime import UTC, datetime

import polars as pl

from engine.journeys import SEND_SCHEMA
from engine.outbox import plan_outbox

AS_OF = datetime(2026, 10, 1, 6, tzinfo=UTC)
USERS = pl.LazyFrame(
    {
        "user_id": ["ok", "no_mail", "opted_out", "two_phones", "no_phone", "unknown_consent"],
        "email": ["ok@example.com", None, "out@example.com", "two@example.com", "np@example.com", "u@example.com"],
        "email_consent": [True, True, False, True, True, None],
        "push_tokens": [["t-ok"], [], ["t-out"], ["t-1", "t-2", "t-1"], [], ["t-u"]],
        "push_consent": [True, True, False, True, True, None],
    }
)


def sends(channel: str) -> pl.DataFrame:
    users = USERS.collect().get_column("user_id").to_list()
    return pl.DataFrame(
        {
            "send_key": [f"k-{u}" for u in users],
            "instance_id": [f"i-{u}" for u in users],
            "journey": "j",
            "version": "v",
            "user_id": users,
            "node": "n",
            "channel": channel,
            "template": "t",
            "variant": None,
            "transactional": False,
            "priority": 0,
        },
        schema=SEND_SCHEMA,
    )


def fates(rows: pl.DataFrame) -> dict[str, list[tuple]]:
    grouped: dict[str, list[tuple]] = {}
    for user, recipient, status, reason in rows.select("user_id", "recipient", "status", "reason").iter_rows():
        grouped.setdefault(user, []).append((recipient, status, reason))
    return grouped


def test_email_rows_and_skip_reasons():
    rows = plan_outbox(sends("email"), USERS, run_id="r", as_of=AS_OF)
    assert fates(rows) == {
        "ok": [("ok@example.com", "planned", None)],
        "no_mail": [(None, "skipped", "no_email")],
        "opted_out": [("out@example.com", "skipped", "no_consent")],
        "two_phones": [("two@example.com", "planned", None)],
        "no_phone": [("np@example.com", "planned", None)],
        "unknown_consent": [("u@example.com", "skipped", "no_consent")],
    }
    assert rows.get_column("send_key").to_list() == sorted(f"k-{u}" for u in fates(rows))


def test_a_push_goes_to_each_distinct_token_under_its_own_key():
    rows = plan_outbox(sends("push"), USERS, run_id="r", as_of=AS_OF)
    by_user = fates(rows)
    assert sorted(by_user["two_phones"]) == [("t-1", "planned", None), ("t-2", "planned", None)]
    assert by_user["no_phone"] == [(None, "skipped", "no_push_token")]
    assert by_user["opted_out"] == [("t-out", "skipped", "no_consent")]
    keys = rows.get_column("send_key")
    assert keys.n_unique() == rows.height
    assert rows.filter(pl.col("user_id") == "no_phone").get_column("send_key").to_list() == ["k-no_phone"]


def test_planning_is_deterministic():
    first = plan_outbox(sends("push"), USERS, run_id="r", as_of=AS_OF)
    second = plan_outbox(sends("push"), USERS, run_id="r", as_of=AS_OF)
    assert first.equals(second)
