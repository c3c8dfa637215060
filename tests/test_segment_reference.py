"""The whole rule language against a naive reference: random event logs, random rule trees, same members.

Hypothesis draws a small population (attributes of every type, some missing), an event log over ~20 days at
arbitrary minutes (values, JSON properties, some events arriving days late), our own message deliveries, an
as_of that is rarely a midnight, and two segments whose rules nest all/any/not over every kind of leaf with
every kind of window (the second may reference the first). The engine (`compute_memberships` over rollups from
`rollup_events`) and `tests/segment_reference.py` (plain Python per user) must agree exactly.
"""

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.behaviour import DELIVERY_SCHEMA, Behaviour
from engine.rollups import rollup_events
from engine.segments import compute_memberships
from models.segments import SegmentDefinition
from tests.segment_reference import Delivery, Event, reference_memberships

BASE = datetime(2026, 3, 1, tzinfo=UTC)
SPAN = 20 * 24 * 60  # minutes of event history
USERS = ("u1", "u2", "u3", "u4", "u5")
EVENTS = ("view", "cart", "buy")
KEYS = ("color", "size")
PROPERTY_VALUES = ("red", "blue", "8", 8, 2.5, True)
VALUES = (None, -1.0, 0.5, 1.0, 2.5, 10.0)
THRESHOLDS = (-1.0, 0, 0.5, 1, 2.5, 3, 10, 12.5)
USER_SCHEMA = pl.Schema(
    {
        "user_id": pl.String,
        "signed_up_at": pl.Datetime("us", "UTC"),
        "entered_at": pl.Datetime("us", "UTC"),
        "plan": pl.String,
        "score": pl.Int64,
        "tags": pl.List(pl.String),
        "email": pl.String,
    }
)


def at(minutes: int) -> datetime:
    return BASE + timedelta(minutes=minutes)


def compact(mapping: dict[str, Any]) -> dict[str, Any]:
    """Drop unset keys, as an author would leave them out of the YAML."""
    return {key: value for key, value in mapping.items() if value is not None}


minutes = st.integers(-2 * 24 * 60, SPAN + 24 * 60)
durations = st.integers(1, 12 * 24 * 60).map(lambda m: f"{m}m")
timestamps = minutes.flatmap(lambda m: st.sampled_from([at(m), at(m).isoformat(), at(m).strftime("%Y-%m-%dT%H:%MZ")]))
moments = st.one_of(durations, timestamps)
closed = st.sampled_from([None, "left", "right", "both", "none"])
wheres = st.none() | st.dictionaries(st.sampled_from(KEYS), st.sampled_from(PROPERTY_VALUES), min_size=1, max_size=2)

windows = st.one_of(
    st.none(),
    st.builds(lambda last, c: compact({"last": last, "closed": c}), durations, closed),
    st.builds(
        lambda start, length, c: compact({"between": {"from": at(start), "to": at(start + length)}, "closed": c}),
        minutes,
        st.integers(1, 10 * 24 * 60),
        closed,
    ),
    st.builds(
        lambda attribute, length, c: compact({"after": attribute, "for": length, "closed": c}),
        st.sampled_from(["signed_up_at", "entered_at"]),
        st.none() | durations,
        closed,
    ),
    st.builds(
        lambda event, length, c: compact({"after_first": event, "for": length, "closed": c}),
        st.sampled_from(EVENTS),
        st.none() | durations,
        closed,
    ),
    st.builds(lambda c: compact({"since": "entry", "closed": c}), closed),
)
count_bounds = st.one_of(
    st.just({}),
    st.builds(lambda n: {"at_least": n}, st.integers(0, 3)),
    st.builds(lambda n: {"at_most": n}, st.integers(0, 3)),
    st.builds(lambda n: {"exactly": n}, st.integers(0, 3)),
    st.builds(lambda a, b: {"at_least": a, "at_most": a + b}, st.integers(0, 2), st.integers(0, 2)),
)
comparisons = st.dictionaries(
    st.sampled_from(["lt", "lte", "gt", "gte"]), st.sampled_from(THRESHOLDS), min_size=1, max_size=2
) | st.builds(lambda a, b: {"between": sorted([a, b])}, st.sampled_from(THRESHOLDS), st.sampled_from(THRESHOLDS))

performed = st.builds(
    lambda event, where, within, bounds: {
        "performed": compact({"event": event, "where": where, "within": within}) | bounds
    },
    st.sampled_from(EVENTS),
    wheres,
    windows,
    count_bounds,
)
not_performed = st.builds(
    lambda event, where, within: {"not_performed": compact({"event": event, "where": where, "within": within})},
    st.sampled_from(EVENTS),
    wheres,
    windows,
)
aggregate = st.builds(
    lambda event, fn, where, within, compare: {
        "aggregate": compact({"event": event, "fn": fn, "where": where, "within": within}) | compare
    },
    st.sampled_from(EVENTS),
    st.sampled_from(["sum", "avg", "min", "max"]),
    wheres,
    windows,
    comparisons,
)
event_time = st.builds(
    lambda kind, event, where, test: {kind: compact({"event": event, "where": where}) | test},
    st.sampled_from(["first_performed", "last_performed"]),
    st.sampled_from(EVENTS),
    wheres,
    st.one_of(
        st.builds(lambda m: {"before": m}, moments),
        st.builds(lambda m: {"after": m}, moments),
        st.builds(lambda a, b: {"after": a, "before": b}, moments, moments),
        windows.filter(lambda w: w is not None).map(lambda w: {"within": w}),
    ),
)
engagement = st.builds(
    lambda kind, messages, channel, within, bounds: {
        kind: compact({"journey": messages[0], "template": messages[1], "channel": channel, "within": within}) | bounds
    },
    st.sampled_from(["received", "opened", "clicked"]),
    st.sampled_from([("j1", None), ("j2", None), (None, "t1"), ("j1", "t1"), ("j2", "t2")]),
    st.sampled_from(["email", "push", None]),
    windows,
    count_bounds,
)
attribute_tests = st.one_of(
    st.builds(lambda v: {"name": "plan", "equals": v}, st.sampled_from(["free", "pro"])),
    st.builds(lambda v: {"name": "plan", "not_equals": v}, st.sampled_from(["free", "pro"])),
    st.builds(lambda v: {"name": "plan", "in": v}, st.lists(st.sampled_from(["free", "pro", "team"]), max_size=2)),
    st.builds(lambda v: {"name": "plan", "not_in": v}, st.lists(st.sampled_from(["free", "pro", "team"]), max_size=2)),
    st.builds(lambda v: {"name": "plan", "contains": v}, st.sampled_from(["r", "ee", "pro"])),
    st.builds(lambda v: {"name": "email", "matches": v}, st.sampled_from([r"@x\.com$", "^b", "o.@"])),
    st.builds(lambda v: {"name": "email", "contains": v}, st.sampled_from(["bob", "@"])),
    st.builds(lambda v: {"name": "tags", "contains": v}, st.sampled_from(["a", "b"])),
    st.builds(
        lambda op, v: {"name": "score", op: v}, st.sampled_from(["lt", "lte", "gt", "gte"]), st.sampled_from(THRESHOLDS)
    ),
    st.builds(lambda a, b: {"name": "score", "between": sorted([a, b])}, st.integers(-1, 6), st.integers(-1, 6)),
    st.builds(lambda v: {"name": "score", "equals": v}, st.integers(0, 3)),
    st.builds(
        lambda name, v: {"name": name, "exists": v},
        st.sampled_from(["plan", "score", "tags", "signed_up_at"]),
        st.booleans(),
    ),
    st.builds(lambda op, d: {"name": "signed_up_at", op: d}, st.sampled_from(["older_than", "newer_than"]), durations),
    st.builds(lambda op, m: {"name": "signed_up_at", op: m}, st.sampled_from(["before", "after"]), moments),
).map(lambda test: {"attribute": test})
random_bucket = st.builds(
    lambda seed, start, width: {"random_bucket": {"seed": seed, "from": start, "to": min(100, start + width)}},
    st.sampled_from(["exp1", "holdout.2026"]),
    st.integers(0, 99),
    st.integers(1, 60),
)


def rules(refs: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    leaf_kinds = [performed, not_performed, aggregate, event_time, engagement, attribute_tests, random_bucket]
    leaf_kinds += [st.sampled_from([{"segment": ref} for ref in refs])] if refs else []
    return st.recursive(
        st.sampled_from(leaf_kinds).flatmap(lambda kind: kind),  # every kind equally often
        lambda children: st.one_of(
            st.lists(children, min_size=1, max_size=3).map(lambda items: {"all": items}),
            st.lists(children, min_size=1, max_size=3).map(lambda items: {"any": items}),
            children.map(lambda inner: {"not": inner}),
        ),
        max_leaves=5,
    )


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


users = st.tuples(
    *(
        st.fixed_dictionaries(
            {
                "user_id": st.just(user),
                "signed_up_at": optional(minutes.map(at)),
                "entered_at": optional(minutes.map(at)),
                "plan": optional(st.sampled_from(["free", "pro", "team"])),
                "score": optional(st.integers(-1, 5)),
                "tags": optional(st.lists(st.sampled_from(["a", "b", "c"]), max_size=2)),
                "email": optional(st.sampled_from(["ann@x.com", "bob@y.org", "bo@x.com"])),
            }
        )
        for user in USERS
    )
)
properties = st.none() | st.dictionaries(st.sampled_from(KEYS), st.sampled_from(PROPERTY_VALUES), max_size=2).map(
    lambda d: json.dumps(d, sort_keys=True, separators=(",", ":"))
)
events = st.lists(
    st.builds(
        lambda user, event, minute, value, props, late: Event(
            user, event, at(minute), value, props, at(minute).date() + timedelta(days=late)
        ),
        st.sampled_from(USERS),
        st.sampled_from(EVENTS),
        st.integers(0, SPAN),
        st.sampled_from(VALUES),
        properties,
        st.sampled_from([0, 0, 0, 0, 1, 3]),
    ),
    min_size=6,
    max_size=40,
)
deliveries = st.lists(
    st.builds(
        lambda user, journey, template, channel, kind, minute: Delivery(
            user, journey, template, channel, kind, at(minute)
        ),
        st.sampled_from(USERS),
        st.sampled_from(["j1", "j2"]),
        st.sampled_from(["t1", "t2"]),
        st.sampled_from(["email", "push"]),
        st.sampled_from(["received", "opened", "clicked"]),
        st.integers(0, SPAN),
    ),
    max_size=12,
)
as_ofs = st.one_of(
    st.integers(0, SPAN + 24 * 60).map(at),
    st.integers(1, 21).map(lambda day: BASE + timedelta(days=day)),  # midnights, where whole days line up
)
definitions = rules(()).flatmap(
    lambda first: rules(("first",)).map(
        lambda second: {
            name: SegmentDefinition.model_validate({"name": name, "rule": rule})
            for name, rule in (("first", first), ("second", second))
        }
    )
)


def engine_memberships(
    definitions: dict[str, SegmentDefinition],
    user_rows: tuple[dict[str, Any], ...],
    event_rows: list[Event],
    delivery_rows: list[Delivery],
    as_of: datetime,
) -> dict[str, list[str]]:
    frame = pl.DataFrame(
        [(e.user_id, e.event, e.ts, e.value, e.properties, e.load_date) for e in event_rows],
        schema={
            "user_id": pl.String,
            "event": pl.String,
            "ts": pl.Datetime("us", "UTC"),
            "value": pl.Float64,
            "properties": pl.String,
            "load_date": pl.Date,
        },
        orient="row",
    ).lazy()
    arrived = pl.col("load_date") <= as_of.date()
    behaviour = Behaviour(
        as_of=as_of,
        events=frame.filter(arrived & (pl.col("ts") < as_of)),
        rollups=rollup_events(frame).filter(arrived & (pl.col("day") < as_of.date())),
        deliveries=pl.LazyFrame(
            [(d.user_id, d.journey, d.template, d.channel, d.kind, d.ts) for d in delivery_rows],
            schema=DELIVERY_SCHEMA,
            orient="row",
        ),
    )
    users_frame = pl.LazyFrame(list(user_rows), schema=USER_SCHEMA)
    got = compute_memberships(definitions, users_frame, behaviour)
    return {name: members.to_list() for name, members in got.items()}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definitions=definitions, user_rows=users, event_rows=events, delivery_rows=deliveries, as_of=as_ofs)
def test_engine_memberships_equal_the_naive_reference(definitions, user_rows, event_rows, delivery_rows, as_of):
    expected = reference_memberships(definitions, user_rows, event_rows, delivery_rows, as_of)
    assert engine_memberships(definitions, user_rows, event_rows, delivery_rows, as_of) == expected


def test_a_late_event_counts_only_once_it_has_arrived():
    """An event of March 2 that arrives on March 5 is invisible at a March 4 run and visible at a March 5 one."""
    definitions = {
        "buyers": SegmentDefinition.model_validate({"name": "buyers", "rule": {"performed": {"event": "buy"}}})
    }
    late = [Event("u1", "buy", at(24 * 60 + 7), 1.0, None, date(2026, 3, 5))]
    user_rows = ({"user_id": "u1"},)
    for day, members in ((4, []), (5, ["u1"])):
        as_of = datetime(2026, 3, day, 6, tzinfo=UTC)
        assert reference_memberships(definitions, user_rows, late, [], as_of) == {"buyers": members}
        assert engine_memberships(definitions, user_rows, late, [], as_of) == {"buyers": members}
