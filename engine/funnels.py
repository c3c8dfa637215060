"""Funnels read back from what runs recorded: how far a journey's instances got, and how far its messages got.

Both are figures as of an instant: only steps, messages and provider facts recorded at or before `as_of`
count, and goal events after it are not seen, so a past as_of keeps giving the figures it gave, whatever
later runs add. Everything is computed in Polars over every row at once.

- A journey funnel counts distinct instances: one that passed a node twice (a loop through a wait) counts
  once there, and an instance that re-entered is a new instance.
- A delivery funnel counts messages (outbox rows), not provider events: two opens of one email are one opened
  message. Each stage counts the messages that have that fact, as providers report them independently: an
  open whose `delivered` event was lost still counts as opened, so a stage may exceed the one before it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
from sqlalchemy import Select, select
from sqlalchemy.engine import Connection

from engine.analytics import cell, markdown_table, percent
from engine.experiments import attributed, goal_events
from engine.journey_state import EXIT, MOMENT
from models.durations import format_duration
from models.feedback import DeliveryFact
from models.journeys import NODE_KINDS, AnyNode, Goal, JourneyDefinition
from models.tables import JourneyInstance, JourneyTransition, OutboxMessage

_INSTANCES = JourneyInstance.__table__  # type: ignore[attr-defined]
_TRANSITIONS = JourneyTransition.__table__  # type: ignore[attr-defined]
_OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]
_FACTS = DeliveryFact.__table__  # type: ignore[attr-defined]

ENTERED, GOAL = "(entered)", "(goal)"
STAGES = ("planned", "sent", "delivered", "opened", "clicked", "converted")
ENGAGEMENT = {"delivered": "received", "opened": "opened", "clicked": "clicked"}
"""Delivery funnel stages read from provider facts, with the `DeliveryFact.kind` each one counts."""
FEEDBACK_CHANNELS = frozenset({"email"})
"""Channels whose provider reports what happened after a send (SendGrid's Event Webhook); FCM reports nothing
once it accepted a push, so a push's delivered, opened and clicked are unknown (null), not zero."""
GROUP = ("journey", "node", "variant", "channel")


@dataclass(frozen=True)
class JourneyFunnel:
    """`steps`: step, kind, instances, share_of_entered, goals, goal_rate; entered first, goal last."""

    journey: JourneyDefinition
    as_of: datetime
    steps: pl.DataFrame

    def markdown(self) -> str:
        """One row per step: how many instances got there and how many of those reached the goal."""
        goal = self.journey.goal
        lines = [f"### Journey funnel: {self.journey.name}", "", _as_of_line(self.as_of, goal), ""]
        header = ["step", "kind", "instances", "of entered"] + (["goals", "goal rate"] if goal else [])
        rows = [
            [row["step"], row["kind"], cell(row["instances"]), percent(row["share_of_entered"])]
            + ([cell(row["goals"]), percent(row["goal_rate"])] if goal else [])
            for row in self.steps.iter_rows(named=True)
        ]
        return "\n".join([*lines, *markdown_table(header, rows, numeric_from=2)])


@dataclass(frozen=True)
class DeliveryFunnel:
    """`stages`: one row per journey, node, variant (null without variants), channel and stage, in `STAGES` order,
    with `messages`, `of_planned` and `of_sent` (null for `planned`); null counts where a stage is unknown."""

    as_of: datetime
    stages: pl.DataFrame

    def markdown(self) -> str:
        """One row per message kind, each stage as a count with its share of sent (sent: its share of planned)."""
        header = [*GROUP, *STAGES]
        rows = []
        for group in self.stages.partition_by(list(GROUP), maintain_order=True):
            by_stage = {row["stage"]: row for row in group.iter_rows(named=True)}
            keys = [group.get_column(key).first() or "" for key in GROUP]
            rows.append(keys + [_stage_cell(by_stage[stage], _share_shown(stage)) for stage in STAGES])
        intro = (
            f"As of {self.as_of:%Y-%m-%d %H:%M} UTC. Sent: accepted by the provider (% of planned); later stages: "
            "% of sent; converted: a sent message followed by its journey's goal within the goal window; "
            "n/a: not reported by the channel's provider or no goal."
        )
        return "\n".join(["### Delivery funnel", "", intro, "", *markdown_table(header, rows, numeric_from=4)])


def journey_funnel(conn: Connection, journey: JourneyDefinition, *, as_of: datetime) -> JourneyFunnel:
    """Instances that reached each node of `journey`, in the order the definition lists its nodes.

    Entered counts instances that entered by `as_of`; a node, those with a transition into it by then; goal,
    those whose goal exit was recorded by then (a goal event after `as_of` but before the run that saw it is
    not counted yet). Nodes only earlier versions had come after the current ones, as kind `earlier version`.
    """
    moves = _frame(
        conn,
        select(_TRANSITIONS.c.instance_id, _TRANSITIONS.c.from_node, _TRANSITIONS.c.to_node).where(
            _TRANSITIONS.c.journey == journey.name, _TRANSITIONS.c.at <= as_of
        ),
        {"instance_id": pl.String, "from_node": pl.String, "to_node": pl.String},
    )
    goal_ids = _frame(
        conn,
        select(_INSTANCES.c.instance_id).where(
            _INSTANCES.c.journey == journey.name, _INSTANCES.c.exit_reason == "goal"
        ),
        {"instance_id": pl.String},
    ).get_column("instance_id")
    finished = moves.filter(pl.col("to_node") == EXIT, pl.col("instance_id").is_in(goal_ids.implode()))
    moves = moves.with_columns(pl.col("instance_id").is_in(finished.get_column("instance_id").implode()).alias("goal"))
    reached = pl.concat(
        [
            moves.filter(pl.col("from_node").is_null()).select(pl.lit(ENTERED).alias("step"), "instance_id", "goal"),
            moves.filter(pl.col("to_node") != EXIT).select(pl.col("to_node").alias("step"), "instance_id", "goal"),
            finished.select(pl.lit(GOAL).alias("step"), "instance_id", pl.lit(True).alias("goal")),
        ]
    ).unique()
    counts = reached.group_by("step").agg(
        pl.len().cast(pl.Int64).alias("instances"), pl.col("goal").sum().alias("goals")
    )
    steps = _step_order(journey, counts.get_column("step")).join(counts, on="step", how="left").sort("order")
    steps = steps.with_columns(pl.col("instances", "goals").fill_null(0).cast(pl.Int64))
    entered = pl.col("instances").filter(pl.col("step") == ENTERED).first()
    goal_columns = [pl.col("goals"), _share(pl.col("goals"), pl.col("instances")).alias("goal_rate")]
    if journey.goal is None:
        steps = steps.filter(pl.col("step") != GOAL)
        goal_columns = [pl.lit(None, pl.Int64).alias("goals"), pl.lit(None, pl.Float64).alias("goal_rate")]
    steps = steps.select(
        "step", "kind", "instances", _share(pl.col("instances"), entered).alias("share_of_entered"), *goal_columns
    )
    return JourneyFunnel(journey, as_of, steps)


def delivery_funnel(
    conn: Connection, events: pl.LazyFrame, journeys: Sequence[JourneyDefinition], *, as_of: datetime
) -> DeliveryFunnel:
    """Messages planned by `as_of`, by journey, node, variant and channel, through each stage of `STAGES`.

    Planned: every outbox row, skipped ones included. Sent: accepted by the provider. Delivered, opened,
    clicked: with such a `DeliveryFact` at or before `as_of`. Converted: a sent message whose user performed
    the goal of its journey (event and `where`) after the run that planned it and within `goal.within`, the
    attribution `engine.experiments` uses (and, like it, ignoring `match_key`); null for journeys without a
    goal or not among `journeys`.
    """
    messages = _frame(
        conn,
        select(*(_OUTBOX.c[name] for name in [*GROUP, "send_key", "user_id", "as_of", "status"])).where(
            _OUTBOX.c.as_of <= as_of
        ),
        {**dict.fromkeys([*GROUP, "send_key", "user_id"], pl.String), "planned_at": MOMENT, "status": pl.String},
    )
    facts = _frame(
        conn,
        select(_FACTS.c.send_key, _FACTS.c.kind)
        .where(_FACTS.c.ts <= as_of, _FACTS.c.kind.in_(list(ENGAGEMENT.values())))
        .distinct(),
        {"send_key": pl.String, "kind": pl.String},
    )
    sent = messages.filter(pl.col("status") == "accepted")
    goals = {journey.name: journey.goal for journey in journeys if journey.goal is not None}
    converted = _converted_keys(sent, events.filter(pl.col("ts") <= as_of), goals)
    flags = messages.with_columns(
        pl.lit(True).alias("planned"),
        (pl.col("status") == "accepted").alias("sent"),
        *(_has_fact(facts, kind).alias(stage) for stage, kind in ENGAGEMENT.items()),
        pl.col("send_key").is_in(converted.implode()).alias("converted"),
    )
    wide = flags.group_by(*GROUP).agg(pl.col(stage).sum().cast(pl.Int64) for stage in STAGES)
    wide = wide.with_columns(
        *(pl.when(pl.col("channel").is_in(FEEDBACK_CHANNELS)).then(stage) for stage in ENGAGEMENT),
        pl.when(pl.col("journey").is_in(list(goals))).then("converted").alias("converted"),
    )
    return DeliveryFunnel(as_of, _stages(wide))


def _converted_keys(sent: pl.DataFrame, events: pl.LazyFrame, goals: dict[str, Goal]) -> pl.Series:
    """Send keys of sent messages followed by their journey's goal within its window: one join per journey with
    a goal, as each journey has its own goal event, filters and window."""
    found = [
        sent.lazy()
        .filter(pl.col("journey") == name)
        .join(goal_events(events, goal).select("user_id", "ts"), on="user_id")
        .filter(attributed(pl.col("planned_at"), goal))
        .select("send_key")
        for name, goal in goals.items()
    ]
    keys = pl.concat(found).unique().collect() if found else pl.DataFrame(schema={"send_key": pl.String})
    return keys.get_column("send_key")


def _has_fact(facts: pl.DataFrame, kind: str) -> pl.Expr:
    return pl.col("send_key").is_in(facts.filter(pl.col("kind") == kind).get_column("send_key").implode())


def _stages(wide: pl.DataFrame) -> pl.DataFrame:
    """The wide counts as one row per stage, with each count's share of planned and of sent."""
    long = wide.with_columns(pl.col("planned").alias("_planned"), pl.col("sent").alias("_sent")).unpivot(
        index=[*GROUP, "_planned", "_sent"], on=list(STAGES), variable_name="stage", value_name="messages"
    )
    order = pl.col("stage").replace_strict(list(STAGES), list(range(len(STAGES))), return_dtype=pl.Int64)
    return long.sort(*GROUP, order, nulls_last=False).select(
        *GROUP,
        "stage",
        "messages",
        _share(pl.col("messages"), pl.col("_planned")).alias("of_planned"),
        pl.when(pl.col("stage") != "planned").then(_share(pl.col("messages"), pl.col("_sent"))).alias("of_sent"),
    )


def _step_order(journey: JourneyDefinition, reached: pl.Series) -> pl.DataFrame:
    earlier = sorted(set(reached.to_list()) - set(journey.nodes) - {ENTERED, GOAL})
    steps = [(ENTERED, "entry")]
    steps += [(node_id, _kind(node)) for node_id, node in journey.nodes.items()]
    steps += [(node_id, "earlier version") for node_id in earlier] + [(GOAL, "goal")]
    return pl.DataFrame(
        [(order, step, kind) for order, (step, kind) in enumerate(steps)],
        schema={"order": pl.Int64, "step": pl.String, "kind": pl.String},
        orient="row",
    )


def _kind(node: AnyNode) -> str:
    return next(kind for kind in NODE_KINDS if kind in type(node).model_fields)


def _share(part: pl.Expr, whole: pl.Expr) -> pl.Expr:
    """part / whole, null when whole is zero or unknown: no rate of nothing."""
    return pl.when(whole > 0).then(part / whole)


def _frame(conn: Connection, query: Select[Any], schema: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame([tuple(row) for row in conn.execute(query).all()], schema=schema, orient="row")


def _share_shown(stage: str) -> str:
    """Sent is read against planned, every later stage against sent."""
    return "of_planned" if stage == "sent" else "of_sent"


def _stage_cell(row: dict[str, Any], share: str) -> str:
    if row["messages"] is None:
        return "n/a"
    return cell(row["messages"]) if row[share] is None else f"{cell(row['messages'])} ({percent(row[share])})"


def _as_of_line(as_of: datetime, goal: Goal | None) -> str:
    reached = f"As of {as_of:%Y-%m-%d %H:%M} UTC: instances with a step into each node by then."
    if goal is None:
        return f"{reached} The journey has no goal."
    return f"{reached} Goal: `{goal.event}` within {format_duration(goal.within)} of entry."
