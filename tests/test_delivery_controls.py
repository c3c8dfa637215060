"""Delivery controls: hand-made cases per control, and a property test against a plain-Python reference.

The reference below decides message by message with `zoneinfo` and datetime arithmetic, walking the clock a
minute at a time to find where quiet hours end; it shares no code with `engine.delivery_controls`.
"""

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.definitions import load_definitions
from engine.delivery_controls import apply_controls, in_control_group
from engine.outbox import OUTBOX_COLUMNS
from engine.render import TemplateStore
from engine.yaml_source import DefinitionError, load_yaml, validate_document
from models.delivery import ControlGroup, DeliveryPolicy

DEFINITIONS = Path(__file__).resolve().parents[1] / "definitions"
AS_OF = datetime(2026, 10, 14, 12, tzinfo=UTC)  # a Wednesday: 08:00 in New York, 21:00 in Tokyo
INSTANT = pl.Datetime("us", "UTC")
PLANNED_SCHEMA = {
    **dict.fromkeys(OUTBOX_COLUMNS, pl.String),
    "as_of": INSTANT,
    "priority": pl.Int64,
    "transactional": pl.Boolean,
}
HISTORY_SCHEMA = {
    "user_id": pl.String,
    "channel": pl.String,
    "journey": pl.String,
    "instance_id": pl.String,
    "node": pl.String,
    "as_of": INSTANT,
    "sent_at": INSTANT,
}

DECIDED_COLUMNS = ("user_id", "channel", "journey", "instance_id", "node", "as_of", "priority")
OVERNIGHT = {"start": "21:00", "end": "08:00", "mode": "hold"}

Decision = tuple[str, str | None, datetime | None]  # status, reason, not_before


# --- building inputs -------------------------------------------------------------------------------------------


def message(
    user: str,
    *,
    journey: str = "winback",
    node: str | None = None,
    channel: str = "email",
    priority: int = 1,
    transactional: bool = False,
    tokens: int = 1,
    skipped: str | None = None,
    as_of: datetime = AS_OF,
) -> list[dict[str, Any]]:
    """The outbox rows of one planned message: one per push token, keyed `<user>/<journey>/<node>[/<token>]`.

    The node defaults to the channel's name, as a send node has one channel.
    """
    node = node or channel
    base = f"{user}/{journey}/{node}"
    return [
        {
            "send_key": base if channel == "email" else f"{base}/{token}",
            "run_id": "run",
            "as_of": as_of,
            "journey": journey,
            "journey_version": "v1",
            "node": node,
            "instance_id": f"{journey}:{user}",
            "user_id": user,
            "channel": channel,
            "template": "t",
            "recipient": f"{user}@example.com" if channel == "email" else f"token-{token}",
            "status": "skipped" if skipped else "planned",
            "reason": skipped,
            "priority": priority,
            "transactional": transactional,
        }
        for token in range(1 if channel == "email" else tokens)
    ]


def sent(user: str, at: datetime, *, channel: str = "email", journey: str = "winback", tokens: int = 1) -> list[dict]:
    """History rows of one earlier message (one per push token), all delivered at `at`."""
    instance = f"earlier:{user}:{channel}:{journey}:{at.isoformat()}"
    row = {"user_id": user, "channel": channel, "journey": journey, "instance_id": instance, "node": "send"}
    return [{**row, "as_of": at, "sent_at": at}] * tokens


def decide(
    *messages: list[dict[str, Any]],
    zones: dict[str, str | None] | None = None,
    history: Sequence[list[dict[str, Any]]] = (),
    as_of: datetime = AS_OF,
    decided: Sequence[dict[str, Any]] | None = None,
    **policy: Any,
) -> dict[str, Decision]:
    """Run the controls and return each row's decision by send key; `decided` rows are outbox rows of messages
    an earlier attempt of the run kept."""
    rows = [row for rows in messages for row in rows]
    users = zones or {row["user_id"]: None for row in rows}
    out = apply_controls(
        pl.DataFrame(rows, schema=PLANNED_SCHEMA),
        users=pl.LazyFrame(
            {"user_id": list(users), "timezone": list(users.values())},
            schema={"user_id": pl.String, "timezone": pl.String},
        ),
        history=pl.DataFrame([row for rows in history for row in rows], schema=HISTORY_SCHEMA),
        policy=DeliveryPolicy.model_validate(policy),
        as_of=as_of,
        decided=None if decided is None else pl.DataFrame(decided, schema=PLANNED_SCHEMA).select(DECIDED_COLUMNS),
    )
    return {
        key: (status, reason, nb)
        for key, status, reason, nb in out.select("send_key", "status", "reason", "not_before").iter_rows()
    }


PLANNED: Decision = ("planned", None, None)


def skipped(reason: str) -> Decision:
    return ("skipped", reason, None)


def held(until: datetime) -> Decision:
    return ("planned", None, until)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- the frame: order, existing skips, inputs --------------------------------------------------------------------


def test_rows_keep_their_order_and_columns_and_gain_not_before():
    rows = message("b") + message("a", channel="push", tokens=2) + message("c", skipped="no_email")
    frame = pl.DataFrame(rows, schema=PLANNED_SCHEMA)
    out = apply_controls(
        frame,
        users=pl.LazyFrame({"user_id": ["a", "b", "c"], "timezone": ["Asia/Tokyo", None, None]}),
        history=pl.DataFrame(schema=HISTORY_SCHEMA),
        policy=DeliveryPolicy.model_validate({"caps": {"push": {"per_day": 0}}, "quiet_hours": OVERNIGHT}),
        as_of=utc(2026, 10, 14, 22),
    )
    assert out.columns == [*frame.columns, "not_before"]
    assert out.schema["not_before"] == INSTANT
    assert out.drop("status", "reason", "not_before").equals(frame.drop("status", "reason"))
    assert out.select("status", "reason", "not_before").rows() == [
        ("planned", None, utc(2026, 10, 15, 8)),
        ("skipped", "frequency_cap:push:day", None),
        ("skipped", "frequency_cap:push:day", None),
        ("skipped", "no_email", None),
    ]


def test_decisions_do_not_depend_on_the_order_of_rows():
    rows = [
        message(user, journey=journey, node=f"{step}_{channel}", channel=channel, tokens=2)
        for user in ("a", "b")
        for journey in ("winback", "abandoned_cart")
        for step in ("first", "second")
        for channel in ("email", "push")
    ]
    policy = {"caps": {"push": {"per_day": 1}}, "control_group": {"percent": 50, "seed": "s"}}
    history = [sent("b", AS_OF - timedelta(hours=1), channel="push")]
    assert decide(*rows, history=history, **policy) == decide(*reversed(rows), history=history, **policy)


def test_an_empty_plan_gives_an_empty_frame():
    assert decide(caps={"email": {"per_day": 1}}, quiet_hours={"start": "21:00", "end": "08:00"}) == {}


def test_rows_skipped_at_planning_keep_their_reason_and_take_no_part():
    decisions = decide(
        message("u", journey="abandoned_cart", priority=9, skipped="no_consent"),
        message("u", journey="winback", priority=1),
        caps={"email": {"per_day": 1}},
    )
    assert decisions == {"u/abandoned_cart/email": skipped("no_consent"), "u/winback/email": PLANNED}


def test_a_planned_row_without_priority_is_refused():
    rows = message("u")
    rows[0]["priority"] = None
    with pytest.raises(ValueError, match="priority"):
        decide(rows)


# --- control group -----------------------------------------------------------------------------------------------


def test_the_control_group_is_a_fixed_hash_of_seed_and_user():
    """Pinned members: a change to the hash would silently reshuffle the holdout and ruin every lift study."""
    ids = pl.Series([f"user-{i}" for i in range(400)])
    members = ids.filter(in_control_group(ids, ControlGroup(percent=5, seed="global-holdout-1"))).to_list()
    assert members == [
        "user-25", "user-29", "user-32", "user-58", "user-116", "user-123", "user-141", "user-162", "user-166",
        "user-182", "user-208", "user-211", "user-212", "user-217", "user-220", "user-280", "user-341", "user-360",
        "user-365",
    ]  # fmt: skip
    digest = hashlib.sha256(b"global-holdout-1|user-25").digest()
    assert int.from_bytes(digest[:8], "big") % 10_000 < 500


def test_the_control_group_holds_its_share_and_changes_with_the_seed():
    ids = pl.Series([f"user-{i}" for i in range(20_000)])
    first = in_control_group(ids, ControlGroup(percent=5, seed="global-holdout-1"))
    second = in_control_group(ids, ControlGroup(percent=5, seed="global-holdout-2"))
    assert 0.045 < first.mean() < 0.055  # type: ignore[operator]
    assert (first & second).sum() < 0.2 * first.sum()
    assert not in_control_group(ids, ControlGroup(percent=0, seed="s")).any()
    assert in_control_group(ids, ControlGroup(percent=100, seed="s")).all()


def test_control_users_get_no_marketing_but_their_transactional_messages():
    decisions = decide(
        message("user-25"),
        message("user-25", journey="receipt", channel="push", transactional=True),
        message("user-26"),
        control_group={"percent": 5, "seed": "global-holdout-1"},
    )
    assert decisions == {
        "user-25/winback/email": skipped("control_group"),
        "user-25/receipt/push/0": PLANNED,
        "user-26/winback/email": PLANNED,
    }


# --- priority arbitration ----------------------------------------------------------------------------------------


def test_the_highest_priority_takes_the_channel_and_pushes_to_several_tokens_are_one_message():
    decisions = decide(
        message("u", journey="abandoned_cart", priority=2),
        message("u", journey="winback", priority=5),
        message("u", journey="abandoned_cart", channel="push", priority=1, tokens=2),
        message("u", journey="winback", channel="push", priority=0, tokens=3),
    )
    assert decisions == {
        "u/abandoned_cart/email": skipped("lower_priority"),
        "u/winback/email": PLANNED,
        "u/abandoned_cart/push/0": PLANNED,
        "u/abandoned_cart/push/1": PLANNED,
        **{f"u/winback/push/{token}": skipped("lower_priority") for token in range(3)},
    }


def test_ties_go_to_the_journey_then_node_first_in_order():
    decisions = decide(
        message("u", journey="winback", node="a"),
        message("u", journey="abandoned_cart", node="b"),
        message("u", journey="abandoned_cart", node="a"),
    )
    assert decisions == {
        "u/winback/a": skipped("lower_priority"),
        "u/abandoned_cart/b": skipped("lower_priority"),
        "u/abandoned_cart/a": PLANNED,
    }


def test_transactional_messages_neither_compete_nor_count():
    decisions = decide(
        message("u", journey="receipt", priority=0, transactional=True),
        message("u", journey="password", priority=9, transactional=True),
        message("u", journey="winback"),
        caps={"email": {"per_day": 1}},
    )
    assert decisions == {"u/receipt/email": PLANNED, "u/password/email": PLANNED, "u/winback/email": PLANNED}


def test_a_capped_top_message_hands_the_channel_to_the_next():
    decisions = decide(
        message("u", journey="abandoned_cart", priority=9),
        message("u", journey="winback", priority=1),
        message("u", journey="welcome", priority=0),
        journey_caps={"abandoned_cart": {"email": {"per_week": 1}}},
        history=[sent("u", AS_OF - timedelta(days=1), journey="abandoned_cart")],
    )
    assert decisions == {
        "u/abandoned_cart/email": skipped("journey_cap:abandoned_cart:email:week"),
        "u/winback/email": PLANNED,
        "u/welcome/email": skipped("lower_priority"),
    }


# --- frequency caps ----------------------------------------------------------------------------------------------


def test_a_day_cap_counts_the_users_local_day():
    """At 09:00 in Los Angeles, a mail sent at 05:00 UTC went out yesterday evening there, today in UTC."""
    as_of = utc(2026, 10, 14, 16)
    earlier = utc(2026, 10, 14, 5)
    decisions = decide(
        message("la", as_of=as_of),
        message("nowhere", as_of=as_of),
        zones={"la": "America/Los_Angeles", "nowhere": None},
        history=[sent("la", earlier), sent("nowhere", earlier)],
        as_of=as_of,
        caps={"email": {"per_day": 1}},
    )
    assert decisions == {"la/winback/email": PLANNED, "nowhere/winback/email": skipped("frequency_cap:email:day")}


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        # Sunday 1 Nov 2026 12:00 EST, after the clocks went back: the week began Monday 26 Oct, 00:00 EDT.
        (utc(2026, 11, 1, 17), {"ny_monday": "capped", "ny_sunday": "planned", "utc_monday": "capped"}),
        # Sunday 23:30 EST is already Monday 2 Nov in UTC: a new week for the UTC user only.
        (utc(2026, 11, 2, 4, 30), {"ny_monday": "capped", "ny_sunday": "planned", "utc_monday": "planned"}),
    ],
)
def test_a_week_cap_counts_the_local_iso_week_across_a_dst_change(as_of: datetime, expected: dict[str, str]):
    monday_0030_edt = utc(2026, 10, 26, 4, 30)
    sunday_2330_edt = utc(2026, 10, 26, 3, 30)  # still Sunday 25 Oct in New York, Monday in UTC
    decisions = decide(
        *(message(user, as_of=as_of) for user in expected),
        zones={"ny_monday": "America/New_York", "ny_sunday": "America/New_York", "utc_monday": None},
        history=[
            sent("ny_monday", monday_0030_edt),
            sent("ny_sunday", sunday_2330_edt),
            sent("utc_monday", sunday_2330_edt),
        ],
        as_of=as_of,
        caps={"email": {"per_week": 1}},
    )
    outcome = {"capped": skipped("frequency_cap:email:week"), "planned": PLANNED}
    assert decisions == {f"{user}/winback/email": outcome[fate] for user, fate in expected.items()}


def test_a_day_cap_in_the_spring_forward_night():
    """Sunday 8 Mar 2026, 23:30 EDT: 04:30 UTC that morning was Saturday 23:30 EST, 05:30 UTC was Sunday."""
    as_of = utc(2026, 3, 9, 3, 30)
    decisions = decide(
        message("saturday", as_of=as_of),
        message("sunday", as_of=as_of),
        zones={"saturday": "America/New_York", "sunday": "America/New_York"},
        history=[sent("saturday", utc(2026, 3, 8, 4, 30)), sent("sunday", utc(2026, 3, 8, 5, 30))],
        as_of=as_of,
        caps={"email": {"per_day": 1}},
    )
    assert decisions == {"saturday/winback/email": PLANNED, "sunday/winback/email": skipped("frequency_cap:email:day")}


def test_caps_are_checked_day_then_week_then_journey():
    history = [sent("u", AS_OF - timedelta(hours=h), journey="abandoned_cart") for h in (1, 2)]
    policy = {"journey_caps": {"abandoned_cart": {"email": {"per_day": 1, "per_week": 1}}}}
    mail = message("u", journey="abandoned_cart")
    assert decide(mail, history=history, caps={"email": {"per_day": 2, "per_week": 2}}, **policy) == {
        "u/abandoned_cart/email": skipped("frequency_cap:email:day")
    }
    assert decide(mail, history=history, caps={"email": {"per_day": 3, "per_week": 2}}, **policy) == {
        "u/abandoned_cart/email": skipped("frequency_cap:email:week")
    }
    assert decide(mail, history=history, caps={"email": {"per_day": 3}}, **policy) == {
        "u/abandoned_cart/email": skipped("journey_cap:abandoned_cart:email:day")
    }
    assert decide(mail, history=history, journey_caps={"abandoned_cart": {"email": {"per_week": 2}}}) == {
        "u/abandoned_cart/email": skipped("journey_cap:abandoned_cart:email:week")
    }
    assert decide(mail, history=history, journey_caps={"winback": {"email": {"per_week": 1}}}) == {
        "u/abandoned_cart/email": PLANNED
    }


def test_a_push_to_several_tokens_counts_once_against_a_cap():
    one_push = sent("u", AS_OF - timedelta(hours=1), channel="push", tokens=3)
    another = sent("u", AS_OF - timedelta(hours=2), channel="push", journey="welcome", tokens=2)
    push = message("u", channel="push")
    assert decide(push, history=[one_push], caps={"push": {"per_day": 2}}) == {"u/winback/push/0": PLANNED}
    assert decide(push, history=[one_push, another], caps={"push": {"per_day": 2}}) == {
        "u/winback/push/0": skipped("frequency_cap:push:day")
    }


def test_transactional_messages_bypass_caps():
    decisions = decide(
        message("u", journey="receipt", transactional=True),
        history=[sent("u", AS_OF - timedelta(hours=1))],
        caps={"email": {"per_day": 1}},
    )
    assert decisions == {"u/receipt/email": PLANNED}


def test_a_message_an_earlier_attempt_kept_holds_the_channel():
    """A run redone after it failed between two journeys' writes: the first journey's kept message ranks with
    the second journey's candidates as in one attempt, and counts against no cap of its own run."""
    first, second = message("u", journey="first", priority=5), message("u", journey="second", priority=1)
    caps = {"email": {"per_day": 1}}
    assert decide(first, second, caps=caps)["u/second/email"] == skipped("lower_priority")
    assert decide(second, decided=first, caps=caps) == {"u/second/email": skipped("lower_priority")}
    urgent = message("u", journey="urgent", priority=9)
    assert decide(urgent, decided=first, caps=caps) == {"u/urgent/email": PLANNED}
    other_user = message("v", journey="second")
    assert decide(other_user, decided=first, caps=caps) == {"v/second/email": PLANNED}


def test_a_message_replanned_is_not_capped_by_itself():
    """A replayed run finds its own first attempt in the outbox: same instance, node and as_of."""
    mail = message("u")
    itself = [{**sent("u", AS_OF)[0], "instance_id": mail[0]["instance_id"], "node": mail[0]["node"]}]
    assert decide(mail, history=[itself], caps={"email": {"per_day": 1}}) == {"u/winback/email": PLANNED}


def test_a_held_message_counts_on_the_day_it_is_delivered():
    """23:00 in Los Angeles: held to 08:00 tomorrow there, it meets tomorrow's cap, not today's."""
    as_of = utc(2026, 10, 14, 6)
    tomorrow_0800 = utc(2026, 10, 14, 15)
    decisions = decide(
        message("sent_tonight", as_of=as_of),
        message("held_for_tomorrow", as_of=as_of),
        zones={"sent_tonight": "America/Los_Angeles", "held_for_tomorrow": "America/Los_Angeles"},
        history=[sent("sent_tonight", utc(2026, 10, 14, 1)), sent("held_for_tomorrow", utc(2026, 10, 14, 16))],
        as_of=as_of,
        caps={"email": {"per_day": 1}},
        quiet_hours={"start": "21:00", "end": "08:00", "mode": "hold"},
    )
    assert decisions == {
        "sent_tonight/winback/email": held(tomorrow_0800),
        "held_for_tomorrow/winback/email": skipped("frequency_cap:email:day"),
    }


# --- quiet hours -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        (utc(2026, 10, 14, 11, 59), PLANNED),  # 20:59 JST
        (utc(2026, 10, 14, 12), held(utc(2026, 10, 14, 23))),  # 21:00 JST: until 08:00 JST tomorrow
        (utc(2026, 10, 14, 13, 30, 15), held(utc(2026, 10, 14, 23))),
        (utc(2026, 10, 14, 16), held(utc(2026, 10, 14, 23))),  # 01:00 JST, past midnight: until 08:00 today
        (utc(2026, 10, 14, 23), PLANNED),  # 08:00 JST: the window has ended
    ],
)
def test_quiet_hours_across_midnight_in_tokyo(as_of: datetime, expected: Decision):
    decisions = decide(message("u", as_of=as_of), zones={"u": "Asia/Tokyo"}, as_of=as_of, quiet_hours=OVERNIGHT)
    assert decisions == {"u/winback/email": expected}


@pytest.mark.parametrize(
    ("window", "as_of", "until"),
    [
        # Saturday 31 Oct 22:00 EDT: the window ends Sunday 08:00 EST, after the clocks went back an hour.
        (OVERNIGHT, utc(2026, 11, 1, 2), utc(2026, 11, 1, 13)),
        # Sunday 8 Mar 01:30 EST: 02:30 never shows (02:00 EST -> 03:00 EDT); the window ends at the jump.
        ({"start": "21:00", "end": "02:30"}, utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7)),
        # Sunday 1 Nov 00:30 EDT: 01:30 shows twice; the window ends at the first, 01:30 EDT.
        ({"start": "23:00", "end": "01:30"}, utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 5, 30)),
        # Sunday 1 Nov 01:10 EST, the second time round: it ends at the next 01:30, EST.
        ({"start": "23:00", "end": "01:30"}, utc(2026, 11, 1, 6, 10), utc(2026, 11, 1, 6, 30)),
    ],
)
def test_quiet_hours_end_on_the_new_york_wall_clock_across_dst(window: dict, as_of: datetime, until: datetime):
    decisions = decide(message("u", as_of=as_of), zones={"u": "America/New_York"}, as_of=as_of, quiet_hours=window)
    assert decisions == {"u/winback/email": held(until)}


def test_quiet_hours_for_a_user_without_time_zone_are_utc():
    as_of = utc(2026, 10, 14, 22)
    decisions = decide(message("u", as_of=as_of), zones={"u": None}, as_of=as_of, quiet_hours=OVERNIGHT)
    assert decisions == {"u/winback/email": held(utc(2026, 10, 15, 8))}


def test_a_channel_can_drop_or_skip_quiet_hours():
    policy = {**OVERNIGHT, "channels": {"push": {"start": "22:00", "end": "07:00", "mode": "drop"}, "email": None}}
    late, evening = utc(2026, 10, 14, 22, 30), utc(2026, 10, 14, 21, 30)
    late_messages = [message("u", channel="push", as_of=late), message("u", channel="email", as_of=late)]
    assert decide(*late_messages, as_of=late, quiet_hours=policy) == {
        "u/winback/push/0": skipped("quiet_hours"),
        "u/winback/email": PLANNED,
    }
    evening_messages = [message("u", channel="push", as_of=evening), message("u", channel="email", as_of=evening)]
    assert decide(*evening_messages, as_of=evening, quiet_hours=policy) == {
        "u/winback/push/0": PLANNED,
        "u/winback/email": PLANNED,
    }


def test_transactional_messages_are_not_held():
    decisions = decide(
        message("u", transactional=True, as_of=utc(2026, 10, 14, 23)),
        as_of=utc(2026, 10, 14, 23),
        quiet_hours=OVERNIGHT,
    )
    assert decisions == {"u/winback/email": PLANNED}


# --- the policy file ---------------------------------------------------------------------------------------------


def test_the_shipped_policy_is_valid():
    policy = validate_document(load_yaml(DEFINITIONS / "delivery.yaml"), DeliveryPolicy)
    assert policy.control_group == ControlGroup(percent=5, seed="global-holdout-1")
    assert policy.caps["email"].per_week == 3
    assert policy.journey_caps["abandoned_cart"]["email"].per_week == 2
    assert policy.quiet_hours is not None
    window = policy.quiet_hours.window("push")
    assert window is not None
    assert (window.start, window.end, window.mode) == (time(21), time(8), "hold")


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"quiet_hours": {"start": 1260, "end": "08:00"}}, 'quoted wall-clock time such as "21:00"'),
        ({"quiet_hours": {"start": "9:00", "end": "08:00"}}, "quoted wall-clock time"),
        ({"quiet_hours": {"start": "08:00", "end": "08:00"}}, "empty window"),
        ({"caps": {"email": {}}}, "per_day, per_week or both"),
        ({"caps": {"sms": {"per_day": 1}}}, "email"),
        ({"journey_caps": {"Abandoned Cart": {"email": {"per_day": 1}}}}, "pattern"),
        ({"control_group": {"percent": 5.125, "seed": "s"}}, "decimal places"),
        ({"control_group": {"percent": 5}}, "seed"),
    ],
)
def test_a_wrong_policy_is_refused(policy: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        DeliveryPolicy.model_validate(policy)


# --- the property: the same decisions as a plain-Python reference ------------------------------------------------


def reference(
    rows: list[dict[str, Any]],
    zones: dict[str, str | None],
    history: list[dict[str, Any]],
    policy: DeliveryPolicy,
    as_of: datetime,
) -> dict[str, Decision]:
    """The controls decided one message at a time, as the module docstring states them."""

    def identity(row: dict[str, Any]) -> tuple:
        return row["instance_id"], row["node"], row["as_of"]

    messages: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        if row["status"] == "planned":
            messages.setdefault(identity(row), row)
    planning = {identity(row) for row in rows}
    earlier: dict[tuple, dict[str, Any]] = {}
    for row in history:
        if identity(row) not in planning:
            earlier.setdefault(identity(row), row)

    verdicts: dict[tuple, tuple[str | None, datetime | None]] = {}
    contenders: dict[tuple[str, str], list[tuple[dict[str, Any], datetime | None]]] = defaultdict(list)
    for key, msg in messages.items():
        if msg["transactional"]:
            continue
        zone = ZoneInfo(zones[msg["user_id"]] or "UTC")
        window = policy.quiet_hours.window(msg["channel"]) if policy.quiet_hours else None
        until = quiet_until(as_of, zone, window.start, window.end) if window else None
        if policy.control_group and holdout(msg["user_id"], policy.control_group):
            verdicts[key] = ("control_group", None)
        elif until and window and window.mode == "drop":
            verdicts[key] = ("quiet_hours", None)
        else:
            contenders[msg["user_id"], msg["channel"]].append((msg, until))
    for contending in contenders.values():
        contending.sort(key=lambda c: (-c[0]["priority"], c[0]["journey"], c[0]["node"], c[0]["instance_id"]))
        taken = False
        for msg, until in contending:
            zone = ZoneInfo(zones[msg["user_id"]] or "UTC")
            cap = None if taken else first_cap(msg, (until or as_of).astimezone(zone).date(), zone, earlier, policy)
            verdicts[identity(msg)] = ("lower_priority", None) if taken else (cap, None if cap else until)
            taken = taken or cap is None

    decisions = {}
    for row in rows:
        reason, until = verdicts.get(identity(row), (None, None))
        if row["status"] != "planned":
            decisions[row["send_key"]] = (row["status"], row["reason"], None)
        else:
            decisions[row["send_key"]] = ("skipped", reason, None) if reason else ("planned", None, until)
    return decisions


def holdout(user_id: str, group: ControlGroup) -> bool:
    digest = hashlib.sha256(f"{group.seed}|{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < group.percent * 100


def quiet_until(as_of: datetime, zone: ZoneInfo, start: time, end: time) -> datetime | None:
    """Walk the clock a minute at a time from `as_of` until the local time reaches the window's end."""
    local = as_of.astimezone(zone)
    now = local.time().replace(tzinfo=None)
    inside = start <= now < end if start < end else (now >= start or now < end)
    if not inside:
        return None
    end_wall = datetime.combine(local.date() + timedelta(days=1 if now >= end else 0), end)
    instant = as_of.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while instant.astimezone(zone).replace(tzinfo=None) < end_wall:
        instant += timedelta(minutes=1)
    return instant


def first_cap(
    msg: dict[str, Any], day: date, zone: ZoneInfo, earlier: dict[tuple, dict[str, Any]], policy: DeliveryPolicy
) -> str | None:
    channel, journey = msg["channel"], msg["journey"]
    days = [
        (row["journey"], row["sent_at"].astimezone(zone).date())
        for row in earlier.values()
        if (row["user_id"], row["channel"]) == (msg["user_id"], channel)
    ]
    week = day.isocalendar()[:2]
    channel_cap = policy.caps.get(channel)
    journey_cap = policy.journey_caps.get(journey, {}).get(channel)
    checks = [
        (channel_cap and channel_cap.per_day, sum(d == day for _, d in days), f"frequency_cap:{channel}:day"),
        (
            channel_cap and channel_cap.per_week,
            sum(d.isocalendar()[:2] == week for _, d in days),
            f"frequency_cap:{channel}:week",
        ),
        (
            journey_cap and journey_cap.per_day,
            sum(j == journey and d == day for j, d in days),
            f"journey_cap:{journey}:{channel}:day",
        ),
        (
            journey_cap and journey_cap.per_week,
            sum(j == journey and d.isocalendar()[:2] == week for j, d in days),
            f"journey_cap:{journey}:{channel}:week",
        ),
    ]
    return next((reason for limit, count, reason in checks if limit is not None and count >= limit), None)


ZONES = ["America/New_York", "Asia/Tokyo", "Australia/Lord_Howe", "Europe/London", "Asia/Kolkata", None]
# Spring forward in New York, London and Lord Howe (a 30-minute shift); fall back in Lord Howe, London, New York.
DST_CHANGES = [
    utc(2026, 3, 8, 7), utc(2026, 3, 29, 1), utc(2026, 10, 3, 15, 30),
    utc(2026, 4, 4, 15), utc(2026, 10, 25, 1), utc(2026, 11, 1, 6),
]  # fmt: skip
JOURNEYS = ["abandoned_cart", "winback", "welcome"]
CHANNELS = ["email", "push"]

# Quarter hours, so that runs (on the same grid below) often fall right on a window's edge, or any minute; and
# windows are often overnight ones ending in a time a clock change above skips or repeats.
clocks = st.one_of(
    st.builds(lambda h, q: f"{h:02d}:{15 * q:02d}", st.integers(0, 23), st.integers(0, 3)),
    st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59)),
    st.sampled_from(["00:30", "01:00", "01:30", "01:45", "02:00", "02:15", "02:30", "03:00", "08:00", "21:00"]),
)
evenings = st.builds(lambda h, q: f"{h:02d}:{15 * q:02d}", st.integers(18, 23), st.integers(0, 3))
modes = st.sampled_from(["hold", "hold", "drop"])
windows = st.fixed_dictionaries({"start": clocks | evenings, "end": clocks, "mode": modes}).filter(
    lambda w: w["start"] != w["end"]
)
limits = st.sampled_from([0, 1, 1, 2, 3])
caps = st.fixed_dictionaries({}, optional={"per_day": limits, "per_week": limits.map(lambda n: 2 * n)}).filter(bool)
quiet_hours = st.builds(
    lambda window, channels: {**window, "channels": channels},
    windows,
    st.dictionaries(st.sampled_from(CHANNELS), st.none() | windows, max_size=2),
)
policies = st.fixed_dictionaries(
    {
        "caps": st.dictionaries(st.sampled_from(CHANNELS), caps, max_size=2),
        "journey_caps": st.dictionaries(
            st.sampled_from(JOURNEYS), st.dictionaries(st.sampled_from(CHANNELS), caps, min_size=1), max_size=3
        ),
        "quiet_hours": st.one_of(st.none(), quiet_hours, quiet_hours),
    },
    optional={
        "control_group": st.fixed_dictionaries(
            {"percent": st.sampled_from([0, 5, 50]), "seed": st.text("ab", min_size=1, max_size=3)}
        )
    },
)
moments = st.builds(
    lambda change, minutes, seconds: change + timedelta(minutes=minutes, seconds=seconds),
    st.sampled_from(DST_CHANGES),
    st.integers(-192, 192).map(lambda quarters: 15 * quarters) | st.integers(-2 * 1440, 2 * 1440),
    st.sampled_from([0, 0, 17]),
)
planned_messages = st.lists(
    st.fixed_dictionaries(
        {
            "user": st.integers(0, 2),
            "journey": st.sampled_from(JOURNEYS),
            "node": st.sampled_from(["n1", "n2"]),
            "channel": st.sampled_from(CHANNELS),
            "priority": st.integers(0, 3),
            "transactional": st.sampled_from([False, False, False, True]),
            "tokens": st.integers(1, 3),
            "skip": st.sampled_from([None] * 8 + ["no_consent", "first_token"]),
        }
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda m: (m["user"], m["journey"], m["node"]),
)
earlier_messages = st.lists(
    st.fixed_dictionaries(
        {
            "user": st.integers(0, 2),
            "channel": st.sampled_from(CHANNELS),
            "journey": st.sampled_from(JOURNEYS),
            "minutes": st.integers(-2 * 1440, 1440) | st.integers(-8 * 1440, 1440),
            "tokens": st.integers(1, 2),
            "replays": st.none() | st.integers(0, 7),
        }
    ),
    min_size=2,
    max_size=12,
)


def drawn_messages(plan: list[dict], as_of: datetime) -> list[list[dict[str, Any]]]:
    """The outbox rows of each drawn message; `first_token` skips its first push token as unregistered."""
    messages = []
    for m in plan:
        rows = message(
            f"u{m['user']}",
            journey=m["journey"],
            node=m["node"],
            channel=m["channel"],
            priority=m["priority"],
            transactional=m["transactional"],
            tokens=m["tokens"],
            skipped="no_consent" if m["skip"] == "no_consent" else None,
            as_of=as_of,
        )
        if m["skip"] == "first_token":
            rows[0] = {**rows[0], "status": "skipped", "reason": "unregistered"}
        messages.append(rows)
    return messages


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    zones=st.lists(st.sampled_from(ZONES), min_size=3, max_size=3),
    as_of=moments,
    plan=planned_messages,
    past=earlier_messages,
    policy=policies,
)
def test_apply_controls_agrees_with_the_reference(
    zones: list[str | None], as_of: datetime, plan: list[dict], past: list[dict], policy: dict
):
    users = {f"u{index}": zone for index, zone in enumerate(zones)}
    messages = drawn_messages(plan, as_of)
    history = []
    for index, h in enumerate(past):
        rows = sent(
            f"u{h['user']}", as_of + timedelta(minutes=h["minutes"]), channel=h["channel"], journey=h["journey"]
        )
        rows = [{**row, "instance_id": f"earlier-{index}"} for row in rows] * h["tokens"]
        if h["replays"] is not None and h["replays"] < len(messages):
            replayed = messages[h["replays"]][0]
            keys = ("user_id", "channel", "journey", "instance_id", "node", "as_of")
            rows = [{**row, **{key: replayed[key] for key in keys}} for row in rows]
        history.append(rows)

    decisions = decide(*messages, zones=users, history=history, as_of=as_of, **policy)

    expected = reference(
        [row for rows in messages for row in rows],
        users,
        [row for rows in history for row in rows],
        DeliveryPolicy.model_validate(policy),
        as_of,
    )
    assert decisions == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    zones=st.lists(st.sampled_from(ZONES), min_size=3, max_size=3),
    as_of=moments,
    plan=planned_messages,
    past=earlier_messages,
    policy=policies,
    written=st.sampled_from(JOURNEYS),
)
def test_a_run_redone_after_one_journey_was_written_decides_the_rest_as_one_attempt(
    zones: list[str | None], as_of: datetime, plan: list[dict], past: list[dict], policy: dict, written: str
):
    users = {f"u{index}": zone for index, zone in enumerate(zones)}
    messages = drawn_messages(plan, as_of)
    history = [
        sent(
            f"u{h['user']}",
            as_of + timedelta(minutes=min(h["minutes"], -1)),
            channel=h["channel"],
            journey=h["journey"],
        )
        for h in past
    ]
    once = decide(*messages, zones=users, history=history, as_of=as_of, **policy)
    first = [row for rows in messages for row in rows if row["journey"] == written]
    rest = [rows for rows in messages if rows[0]["journey"] != written]
    kept = [row for row in first if once[row["send_key"]][0] == "planned" and not row["transactional"]]
    redone = decide(*rest, zones=users, history=history, as_of=as_of, decided=kept, **policy)
    assert redone == {key: once[key] for key in redone}


@settings(max_examples=100, deadline=None)
@given(
    as_of=moments,
    quiet=quiet_hours,
    earlier=st.lists(st.integers(-1440, 1440), min_size=len(ZONES), max_size=len(ZONES)),
)
def test_quiet_hours_agree_with_the_reference_in_every_zone(as_of: datetime, quiet: dict, earlier: list[int]):
    """Every zone at once, both channels: many holds and drops per example, and a mail a day held to a new one."""
    users = {f"u{index}": zone for index, zone in enumerate(ZONES)}
    messages = [message(user, channel=channel, as_of=as_of) for user in users for channel in CHANNELS]
    history = [sent(user, as_of + timedelta(minutes=minutes)) for user, minutes in zip(users, earlier, strict=True)]
    policy = {"quiet_hours": quiet, "caps": {"email": {"per_day": 1}}}
    expected = reference(
        [row for rows in messages for row in rows],
        users,
        [row for rows in history for row in rows],
        DeliveryPolicy.model_validate(policy),
        as_of,
    )
    assert decide(*messages, zones=users, history=history, as_of=as_of, **policy) == expected


def test_a_cap_on_a_journey_that_does_not_exist_is_refused(tree: Path):
    """A misspelt journey name would otherwise cap nothing, silently."""
    policy = tree / "definitions/delivery.yaml"
    policy.write_text(policy.read_text().replace("  abandoned_cart:\n", "  abandonned_cart:\n"))
    with pytest.raises(DefinitionError) as caught:
        load_definitions(tree / "definitions", TemplateStore(tree / "templates"))
    [problem] = [str(p) for p in caught.value.problems]
    assert "delivery.yaml:13" in problem and "journey_caps.abandonned_cart" in problem
    assert "unknown journey 'abandonned_cart'" in problem
