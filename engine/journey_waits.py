"""What instances are waiting for, checked for the whole population at once: wait-for nodes and the goal.

Both ask "did this instance's user perform this event in this instance's own window?", with an optional match
on the entry key (the purchase of *this* cart). Windows are open at the start (strictly after the instance
arrived, or entered) and at the end (before the deadline), and nothing at or after as_of is visible. A segment
wait asks whether the user is in the segment at a run after the arrival run, up to the run at the deadline.
"""

from datetime import datetime

import polars as pl

from engine.behaviour import Behaviour, EventFilter
from engine.journey_state import MOMENT
from models.journeys import EventMatch, JourneyDefinition, WaitEvent, WaitForNode, WaitSegment

MATCH_SCHEMA = pl.Schema({"instance_id": pl.String, "matched_at": MOMENT, "match_reason": pl.String})


def first_events(
    windows: pl.DataFrame, match: EventMatch, behaviour: Behaviour, *, key_property: str | None
) -> pl.DataFrame:
    """Per instance with a window (`instance_id, user_id, entry_key, _start, _end`), the first matching event's
    time in (_start, _end), as `instance_id, ts`; instances with none are left out.

    `key_property`, when given, also requires the event's property of that name to equal the `entry_key`.
    """
    if windows.is_empty():
        return pl.DataFrame(schema={"instance_id": pl.String, "ts": MOMENT})
    selection = EventFilter(match.event, tuple(sorted((match.where or {}).items())))
    earliest = windows.get_column("_start").min()
    events = behaviour.events.filter(selection.expr(), pl.col("ts") > earliest).select(
        "user_id",
        "ts",
        (
            pl.col("properties").str.json_path_match(f"$['{key_property}']")
            if key_property
            else pl.lit(None, pl.String)
        ).alias("_key"),
    )
    hits = (
        windows.lazy().join(events, on="user_id").filter(pl.col("ts") > pl.col("_start"), pl.col("ts") < pl.col("_end"))
    )
    if key_property:
        hits = hits.filter(pl.col("_key") == pl.col("entry_key"))
    return hits.group_by("instance_id").agg(pl.col("ts").min()).collect()


def wait_matches(
    journey: JourneyDefinition,
    state: pl.DataFrame,
    *,
    behaviour: Behaviour,
    memberships: dict[str, pl.Series],
) -> pl.DataFrame:
    """Instances at a wait-for node whose awaited event or segment came in time: `MATCH_SCHEMA` rows."""
    found = []
    as_of = behaviour.as_of
    for node_id, node in journey.nodes.items():
        if not isinstance(node, WaitForNode):
            continue
        waiting = state.filter(pl.col("node") == node_id, pl.col("status") == "active")
        if waiting.is_empty():
            continue
        match node.wait_for:
            case WaitEvent() as wanted:
                windows = waiting.select(
                    "instance_id",
                    "user_id",
                    "entry_key",
                    pl.col("node_entered_at").alias("_start"),
                    pl.col("due_at").alias("_end"),
                )
                key = journey.entry_key if wanted.match_key else None
                hits = first_events(windows, wanted, behaviour, key_property=key)
                found.append(
                    hits.select(
                        "instance_id",
                        pl.col("ts").alias("matched_at"),
                        pl.format("{} at {}", pl.lit(_describe_event(wanted, key)), _shown(pl.col("ts"))).alias(
                            "match_reason"
                        ),
                    )
                )
            case WaitSegment(segment=segment):
                members = memberships.get(segment, pl.Series([], dtype=pl.String))
                inside = waiting.filter(
                    pl.col("node_entered_at") < as_of,
                    (pl.col("due_at") >= as_of).fill_null(False),
                    pl.col("user_id").is_in(members.implode()),
                )
                found.append(
                    inside.select(
                        "instance_id",
                        pl.lit(as_of).cast(MOMENT).alias("matched_at"),
                        pl.lit(f"in segment {segment}").alias("match_reason"),
                    )
                )
    return pl.concat(found) if found else pl.DataFrame(schema=MATCH_SCHEMA)


def goal_hits(journey: JourneyDefinition, state: pl.DataFrame, *, behaviour: Behaviour) -> pl.DataFrame:
    """Active instances whose goal event happened within the attribution window since entry: `MATCH_SCHEMA`."""
    goal = journey.goal
    if goal is None:
        return pl.DataFrame(schema=MATCH_SCHEMA)
    windows = state.filter(pl.col("status") == "active").select(
        "instance_id",
        "user_id",
        "entry_key",
        pl.col("entered_at").alias("_start"),
        (pl.col("entered_at") + goal.within).alias("_end"),
    )
    key = journey.entry_key if goal.match_key else None
    hits = first_events(windows, goal, behaviour, key_property=key)
    return hits.select(
        "instance_id",
        pl.col("ts").alias("matched_at"),
        pl.format("goal: {} at {}", pl.lit(_describe_event(goal, key)), _shown(pl.col("ts"))).alias("match_reason"),
    )


def _describe_event(match: EventMatch, key: str | None) -> str:
    narrowed = [f"{name}={value}" for name, value in sorted((match.where or {}).items())]
    if key:
        narrowed.append(f"same {key}")
    return match.event + (f" ({', '.join(narrowed)})" if narrowed else "")


def _shown(ts: pl.Expr) -> pl.Expr:
    return ts.dt.to_string("%Y-%m-%d %H:%M:%S UTC")


def shown_instant(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")
