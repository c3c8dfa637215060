"""Journey experiments read back from what runs recorded: who was assigned which arm, and who converted.

An experiment is a send node with variants or a split node, in a journey with a goal. Its rows, one per
assigned user, are what `engine.stats.experiment.analyze` takes:

- assignment, intent to treat: a send experiment's users are every user with an outbox row at the node, in any
  status (capped, quieted and unreachable users stay in their arm); a split's are every user whose instance
  left the split node. A user who re-entered keeps the arm (assignment is sticky) and is counted once, from
  the first assignment.
- attribution: the user converted if a goal event (name and `where` filters) happened after the first
  assignment and no later than `goal.within` after it; `value` sums those events' values. Events after the
  report's `as_of` are not seen, so a recent user may still convert: the figures are as of that instant.
- `pre_value`: the same sum over the `goal.within` before assignment, the covariate CUPED needs.

Journeys without a goal have nothing to convert to and no experiment here.
"""

from dataclasses import dataclass
from datetime import datetime

import polars as pl
from sqlalchemy import Engine, select

from engine.rule_properties import where_expr
from engine.stats.experiment import ExperimentResult, analyze
from models.durations import format_duration
from models.journeys import Goal, JourneyDefinition, SendNode, SplitNode
from models.tables import JourneyInstance, JourneyTransition, OutboxMessage

_OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]
_TRANSITIONS = JourneyTransition.__table__  # type: ignore[attr-defined]
_INSTANCES = JourneyInstance.__table__  # type: ignore[attr-defined]
_MOMENT = pl.Datetime("us", "UTC")
ASSIGNMENT_SCHEMA = pl.Schema({"user_id": pl.String, "arm": pl.String, "assigned_at": _MOMENT})


@dataclass(frozen=True)
class Experiment:
    """One experiment of a journey: its node, arms with their configured weights (control first) and goal."""

    journey: str
    node: str
    kind: str  # "send" or "split"
    weights: dict[str, int]
    goal: Goal

    @property
    def control(self) -> str:
        return next(iter(self.weights))

    @property
    def title(self) -> str:
        return f"{self.journey} / {self.node}"


@dataclass(frozen=True)
class ExperimentReport:
    experiment: Experiment
    as_of: datetime
    result: ExperimentResult

    def markdown(self) -> str:
        """A table per arm, leading with a sample-ratio mismatch when there is one: then nothing else holds."""
        result, goal = self.result, self.experiment.goal
        lines = [f"### Experiment {self.experiment.title}", ""]
        if result.srm.flagged:
            lines += [
                f"**Sample ratio mismatch** (p = {result.srm.p_value:.2g}): users did not reach the arms in the "
                "configured weights, so the figures below cannot be trusted.",
                "",
            ]
        lines += [
            f"Conversion: `{goal.event}` within {format_duration(goal.within)} of assignment, as of "
            f"{self.as_of:%Y-%m-%d %H:%M} UTC; every assigned user counts (intent to treat).",
            "",
            "| arm | users | conversions | rate | 95% interval | value per user | chance to beat control | p (Holm) |",
            "|---|---:|---:|---:|---|---:|---:|---:|",
        ]
        versus = {comparison.variant: comparison for comparison in result.conversion}
        for arm in result.arms:
            compared = versus.get(arm.arm)
            chance = f"{compared.bayes.chance_to_beat_control:.1%}" if compared else "control"
            p_value = f"{compared.p_value_holm:.3g}" if compared else ""
            interval = arm.conversion_interval
            lines.append(
                f"| {arm.arm} | {arm.users:,} | {arm.conversions:,} | {arm.conversion_rate:.2%} "
                f"| {interval.lower:.2%} to {interval.upper:.2%} | {arm.value_per_user:,.2f} | {chance} | {p_value} |"
            )
        return "\n".join(lines) + "\n"


def experiments_of(journey: JourneyDefinition) -> list[Experiment]:
    """The journey's send and split experiments, in node order; none without a goal."""
    if journey.goal is None:
        return []
    found = []
    for node_id, node in journey.nodes.items():
        if isinstance(node, SendNode) and node.send.variants:
            weights = {variant.variant: variant.weight for variant in node.send.variants}
            found.append(Experiment(journey.name, node_id, "send", weights, journey.goal))
        elif isinstance(node, SplitNode):
            weights = {arm.label: arm.weight for arm in node.split}
            found.append(Experiment(journey.name, node_id, "split", weights, journey.goal))
    return found


def assignments(database: Engine, experiment: Experiment, *, as_of: datetime) -> pl.DataFrame:
    """`ASSIGNMENT_SCHEMA`: each user's arm and first assignment at the experiment's node, up to `as_of`."""
    if experiment.kind == "send":
        query = select(_OUTBOX.c.user_id, _OUTBOX.c.variant, _OUTBOX.c.as_of).where(
            _OUTBOX.c.journey == experiment.journey,
            _OUTBOX.c.node == experiment.node,
            _OUTBOX.c.variant.is_not(None),
            _OUTBOX.c.as_of <= as_of,
        )
    else:
        query = (
            select(_TRANSITIONS.c.user_id, _INSTANCES.c.arm, _TRANSITIONS.c.at)
            .join(_INSTANCES, _INSTANCES.c.instance_id == _TRANSITIONS.c.instance_id)
            .where(
                _TRANSITIONS.c.journey == experiment.journey,
                _TRANSITIONS.c.from_node == experiment.node,
                _TRANSITIONS.c.at <= as_of,
            )
        )
    with database.connect() as conn:
        rows = conn.execute(query).all()
    frame = pl.DataFrame([tuple(row) for row in rows], schema=ASSIGNMENT_SCHEMA, orient="row")
    return (
        frame.sort("user_id", "assigned_at", "arm")
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("arm").first(), pl.col("assigned_at").first())
    )


def outcomes(assigned: pl.DataFrame, events: pl.LazyFrame, goal: Goal) -> pl.DataFrame:
    """One row per assigned user: `arm`, `converted`, `value` and `pre_value` (see the module docstring)."""
    wanted = events.filter(pl.col("event") == goal.event, where_expr((goal.where or {}).items())).select(
        "user_id", "ts", pl.col("value").fill_null(0.0)
    )
    joined = assigned.lazy().join(wanted, on="user_id", how="left")
    after = (pl.col("ts") > pl.col("assigned_at")) & (pl.col("ts") <= pl.col("assigned_at") + goal.within)
    before = (pl.col("ts") >= pl.col("assigned_at") - goal.within) & (pl.col("ts") < pl.col("assigned_at"))
    return (
        joined.group_by("user_id", "arm")
        .agg(
            after.fill_null(False).any().alias("converted"),
            pl.col("value").filter(after).sum().alias("value"),
            pl.col("value").filter(before).sum().alias("pre_value"),
        )
        .with_columns(pl.col("value", "pre_value").fill_null(0.0))
        .sort("user_id")
        .collect()
    )


def report_experiments(
    database: Engine, journeys: list[JourneyDefinition], *, events: pl.LazyFrame, as_of: datetime
) -> list[ExperimentReport]:
    """Every experiment with at least one assigned user, analyzed as of `as_of`."""
    reports = []
    for journey in journeys:
        for experiment in experiments_of(journey):
            assigned = assignments(database, experiment, as_of=as_of)
            if assigned.is_empty():
                continue
            rows = outcomes(assigned, events.filter(pl.col("ts") <= as_of), experiment.goal)
            result = analyze(rows, control=experiment.control, expected_weights=experiment.weights)
            reports.append(ExperimentReport(experiment, as_of, result))
    return reports
