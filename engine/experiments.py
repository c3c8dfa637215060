"""Journey experiments read back from what runs recorded: who was assigned which arm, and who converted.

An experiment is a send node with variants or a split node, in a journey with a goal; and, in a journey with a
holdout and a goal, the holdout itself: held-out users (entered, sent nothing) are the control the others are
measured against, the journey's own lift. Its rows, one per assigned user, are what
`engine.stats.experiment.analyze` takes:

- assignment, intent to treat: a send experiment's users are every user with an outbox row at the node, in any
  status (capped, quieted and unreachable users stay in their arm); a split's are every user whose instance
  left the split node. A user who re-entered keeps the arm (assignment is sticky) and is counted once, from
  the first assignment. A holdout's users are every user who entered, assigned at their first entry.
- attribution: the user converted if a goal event (name and `where` filters) happened after the first
  assignment and no later than `goal.within` after it; `value` sums those events' values. Events after the
  report's `as_of` are not seen, so a recent user may still convert: the figures are as of that instant.
- `pre_value`: the same sum over the `goal.within` before assignment, the covariate CUPED needs.

Journeys without a goal have nothing to convert to and no experiment here.

Adaptive send experiments (`allocation: thompson`, see `engine.allocation`) change their shares run by run, so
the sample-ratio check expects, for each arm, the sum over users of the share their arm had at the run that
assigned them (the configured weights for users assigned before the node became adaptive). Their report adds
the shares' history and the promotion rule's decision (`engine.stats.thompson.promotion_decision`) on the
settled users, those whose attribution window had closed by `as_of`: "promote <variant>" when every threshold
holds. Promoting is the operator's edit of the journey's YAML (the winner becomes the send's `template`); no run
changes a definition. The arms are compared over all runs pooled, so a conversion rate that drifts while the
shares move confounds arm with time: the settled-user figures the allocation uses share that limit.
"""

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl
from sqlalchemy import ColumnElement, Engine, and_, case, select

from engine.db import read_frame
from engine.rule_properties import where_expr
from engine.stats.experiment import ExperimentResult, analyze
from engine.stats.thompson import Promotion, PromotionRule, promotion_decision
from models.durations import format_duration
from models.feedback import DeliveryFact
from models.journeys import Goal, JourneyDefinition, SendNode, SendSpec, SplitNode
from models.tables import JourneyInstance, JourneyTransition, OutboxMessage, VariantAllocation

_OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]
_TRANSITIONS = JourneyTransition.__table__  # type: ignore[attr-defined]
_INSTANCES = JourneyInstance.__table__  # type: ignore[attr-defined]
_ALLOCATIONS = VariantAllocation.__table__  # type: ignore[attr-defined]
_MOMENT = pl.Datetime("us", "UTC")
ASSIGNMENT_SCHEMA = pl.Schema({"user_id": pl.String, "arm": pl.String, "assigned_at": _MOMENT})
HISTORY_SCHEMA = pl.Schema(
    {
        "as_of": _MOMENT,
        "variant": pl.String,
        "share": pl.Float64,
        "chance_to_be_best": pl.Float64,
        "users": pl.Int64,
        "conversions": pl.Int64,
    }
)
GUARDRAIL_SCHEMA = pl.Schema({"arm": pl.String, "sent": pl.Int64, "opened": pl.Int64, "clicked": pl.Int64})
HISTORY_ROWS = 10
"""Runs of an adaptive experiment's share history a report shows, the latest."""


@dataclass(frozen=True)
class Experiment:
    """One experiment of a journey: its node, arms with their configured weights (control first) and goal."""

    journey: str
    node: str
    kind: str  # "send", "split" or "holdout"
    weights: dict[str, int]
    goal: Goal
    thompson: SendSpec | None = None  # the send's settings when its allocation is adaptive

    @property
    def control(self) -> str:
        return next(iter(self.weights))

    @property
    def title(self) -> str:
        return f"{self.journey} / {self.node}"


@dataclass(frozen=True)
class Adaptive:
    """An adaptive experiment's shares run by run (`HISTORY_SCHEMA`, up to the report's as_of) and the promotion
    rule's decision on its settled users."""

    history: pl.DataFrame
    promotion: Promotion

    def markdown(self, experiment: Experiment, min_share: float) -> list[str]:
        """The promotion line, then the latest shares: what an operator acts on comes first."""
        arms = list(experiment.weights)
        decision = self.promotion
        leader = arms[decision.leader]
        figures = f"chance to be best {decision.chance_to_be_best:.1%}, expected loss {decision.expected_loss:.5f}"
        if decision.winner is not None:
            lines = [
                f"**promote {leader}**: {decision.reason} ({figures}). Make its template the send's only `template` "
                "in the journey's YAML: that ends the experiment; no run changes a definition.",
            ]
        else:
            lines = [f"No variant to promote yet (leader {leader}: {figures}): {decision.reason}."]
        by_run: dict[datetime, dict[str, float]] = {}
        for at, variant, share in self.history.select("as_of", "variant", "share").iter_rows():
            by_run.setdefault(at, {})[variant] = share
        shown = sorted(by_run)[-HISTORY_ROWS:]
        lines += [
            "",
            f"Allocation: Thompson sampling on the users settled at each run (assigned more than "
            f"{format_duration(experiment.goal.within)} before it), at least {min_share:.0%} per variant; "
            f"shares of the last {len(shown)} of {len(by_run)} runs:",
            "",
            "| as of | " + " | ".join(arms) + " |",
            "|---|" + "---:|" * len(arms),
        ]
        for at in shown:
            shares = " | ".join(f"{by_run[at][arm]:.1%}" if arm in by_run[at] else "" for arm in arms)
            lines.append(f"| {at:%Y-%m-%d %H:%M} | {shares} |")
        return lines


@dataclass(frozen=True)
class ExperimentReport:
    experiment: Experiment
    as_of: datetime
    result: ExperimentResult
    adaptive: Adaptive | None = None
    guardrails: pl.DataFrame | None = None  # send experiments: `GUARDRAIL_SCHEMA`, one row per arm

    def markdown(self) -> str:
        """A table per arm, leading with a sample-ratio mismatch when there is one: then nothing else holds."""
        result, goal = self.result, self.experiment.goal
        lines = [f"### Experiment {self.experiment.title}", ""]
        if result.srm.flagged:
            expected = "shares each run allocated" if self.adaptive else "configured weights"
            lines += [
                f"**Sample ratio mismatch** (p = {result.srm.p_value:.2g}): users did not reach the arms in the "
                f"{expected}, so the figures below cannot be trusted.",
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
        if self.guardrails is not None and not self.guardrails.is_empty():
            lines += _guardrail_lines(self.guardrails)
        if self.adaptive is not None and self.experiment.thompson is not None:
            lines += ["", *self.adaptive.markdown(self.experiment, self.experiment.thompson.min_share)]
        return "\n".join(lines) + "\n"


def _guardrail_lines(guardrails: pl.DataFrame) -> list[str]:
    """Opens and clicks per arm: a variant that converts by annoying people shows it here first."""
    lines = [
        "",
        "Guardrails: users whose message was accepted by the provider, and the share of them with an open or a click "
        "reported by the provider's webhook.",
        "",
        "| arm | sent to | opened | clicked |",
        "|---|---:|---:|---:|",
    ]
    for arm, sent, opened, clicked in guardrails.iter_rows():
        opened_share = f"{opened / sent:.1%}" if sent else "n/a"
        clicked_share = f"{clicked / sent:.1%}" if sent else "n/a"
        lines.append(f"| {arm} | {sent:,} | {opened:,} ({opened_share}) | {clicked:,} ({clicked_share}) |")
    return lines


def experiments_of(journey: JourneyDefinition) -> list[Experiment]:
    """The journey's holdout, then its send and split experiments in node order; none without a goal."""
    if journey.goal is None:
        return []
    found = []
    if journey.holdout:
        weights = {"holdout": journey.holdout, "messaged": 100 - journey.holdout}
        found.append(Experiment(journey.name, "holdout", "holdout", weights, journey.goal))
    for node_id, node in journey.nodes.items():
        if isinstance(node, SendNode) and node.send.variants:
            weights = {variant.variant: variant.weight for variant in node.send.variants}
            adaptive = node.send if node.send.allocation == "thompson" else None
            found.append(Experiment(journey.name, node_id, "send", weights, journey.goal, adaptive))
        elif isinstance(node, SplitNode):
            weights = {arm.label: arm.weight for arm in node.split}
            found.append(Experiment(journey.name, node_id, "split", weights, journey.goal))
    return found


def _instance_of_transition() -> ColumnElement[bool]:
    """A transition's instance, by the instance table's whole key (there is no index on instance_id alone)."""
    return and_(*(_INSTANCES.c[name] == _TRANSITIONS.c[name] for name in ("journey", "user_id", "instance_id")))


def assignments(database: Engine, experiment: Experiment, *, as_of: datetime) -> pl.DataFrame:
    """`ASSIGNMENT_SCHEMA`: each user's arm and first assignment at the experiment's node, up to `as_of`."""
    if experiment.kind == "send":
        query = select(_OUTBOX.c.user_id, _OUTBOX.c.variant, _OUTBOX.c.as_of).where(
            _OUTBOX.c.journey == experiment.journey,
            _OUTBOX.c.node == experiment.node,
            _OUTBOX.c.variant.is_not(None),
            _OUTBOX.c.as_of <= as_of,
        )
    elif experiment.kind == "holdout":
        held = case((_INSTANCES.c.holdout.is_(True), "holdout"), else_="messaged")
        query = select(_INSTANCES.c.user_id, held, _INSTANCES.c.entered_at).where(
            _INSTANCES.c.journey == experiment.journey, _INSTANCES.c.entered_at <= as_of
        )
    else:
        query = (
            select(_TRANSITIONS.c.user_id, _INSTANCES.c.arm, _TRANSITIONS.c.at)
            .join(_INSTANCES, _instance_of_transition())
            .where(
                _TRANSITIONS.c.journey == experiment.journey,
                _TRANSITIONS.c.from_node == experiment.node,
                _TRANSITIONS.c.at <= as_of,
            )
        )
    with database.connect() as conn:
        frame = read_frame(conn, query, ASSIGNMENT_SCHEMA)
    return (
        frame.sort("user_id", "assigned_at", "arm")
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("arm").first(), pl.col("assigned_at").first())
    )


def goal_events(events: pl.LazyFrame, goal: Goal) -> pl.LazyFrame:
    """`user_id`, `ts`, `value` (0 when null) of the events that meet the goal: its name and `where` filters."""
    return events.filter(pl.col("event") == goal.event, where_expr((goal.where or {}).items())).select(
        "user_id", "ts", pl.col("value").fill_null(0.0)
    )


def attributed(start: pl.Expr, goal: Goal) -> pl.Expr:
    """Whether a goal event's `ts` is attributed to an exposure at `start`: after it, and within the goal's window."""
    return (pl.col("ts") > start) & (pl.col("ts") <= start + goal.within)


def outcomes(assigned: pl.DataFrame, events: pl.LazyFrame, goal: Goal) -> pl.DataFrame:
    """One row per assigned user: `arm`, `converted`, `value` and `pre_value` (see the module docstring)."""
    joined = assigned.lazy().join(goal_events(events, goal), on="user_id", how="left")
    after = attributed(pl.col("assigned_at"), goal)
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


def settled_results(
    assigned: pl.DataFrame, events: pl.LazyFrame, experiment: Experiment, *, as_of: datetime
) -> tuple[list[int], list[int]]:
    """Conversions and users per arm (in `experiment.weights` order) among the users settled at `as_of`: assigned
    more than `goal.within` before it, so every conversion attributable to them happened before as_of and is seen.
    A user still inside the window is left out rather than counted as not converted: that would hold back the
    arm that lately got more users."""
    settled = assigned.filter(pl.col("assigned_at") + experiment.goal.within < as_of)
    rows = outcomes(settled, events.filter(pl.col("ts") < as_of), experiment.goal)
    counts = {
        arm: (int(converted), users)
        for arm, converted, users in rows.group_by("arm").agg(pl.col("converted").sum(), pl.len()).iter_rows()
    }
    arms = list(experiment.weights)
    return [counts.get(arm, (0, 0))[0] for arm in arms], [counts.get(arm, (0, 0))[1] for arm in arms]


def allocation_history(database: Engine, experiment: Experiment, *, as_of: datetime) -> pl.DataFrame:
    """`HISTORY_SCHEMA`: the shares an adaptive experiment's runs drew, up to `as_of`, by as_of and variant."""
    query = select(*(_ALLOCATIONS.c[name] for name in HISTORY_SCHEMA.names())).where(
        _ALLOCATIONS.c.journey == experiment.journey,
        _ALLOCATIONS.c.node == experiment.node,
        _ALLOCATIONS.c.as_of <= as_of,
    )
    with database.connect() as conn:
        return read_frame(conn, query, HISTORY_SCHEMA).sort("as_of", "variant")


def experiment_rng(experiment: Experiment, as_of: datetime, purpose: str) -> np.random.Generator:
    """A Generator seeded by the experiment, the as_of and what it draws for: the same draws on every rerun and in
    every process, independent between runs and between the allocation and the promotion decision."""
    text = f"{experiment.journey}:{experiment.node}:{as_of.astimezone(UTC).isoformat()}:{purpose}"
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


def expected_users(assigned: pl.DataFrame, history: pl.DataFrame, experiment: Experiment) -> dict[str, float]:
    """Users each arm should have had under the shares of the runs that assigned them (see the module docstring);
    arms no run offered to anyone are left out, as the sample-ratio check takes positive weights only."""
    total = sum(experiment.weights.values())
    configured = {arm: weight / total for arm, weight in experiment.weights.items()}
    drawn: dict[datetime, dict[str, float]] = {}
    for at, variant, share in history.select("as_of", "variant", "share").iter_rows():
        drawn.setdefault(at, {})[variant] = share
    expected = dict.fromkeys(experiment.weights, 0.0)
    for at, users in assigned.group_by("assigned_at").len().iter_rows():
        for arm, share in drawn.get(at, configured).items():
            if arm in expected:
                expected[arm] += users * share
    return {arm: users for arm, users in expected.items() if users > 0}


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
            checks = guardrails(database, experiment, as_of=as_of) if experiment.kind == "send" else None
            if experiment.thompson is None:
                result = analyze(rows, control=experiment.control, expected_weights=experiment.weights)
                reports.append(ExperimentReport(experiment, as_of, result, guardrails=checks))
                continue
            history = allocation_history(database, experiment, as_of=as_of)
            expected = expected_users(assigned, history, experiment)
            result = analyze(rows, control=experiment.control, expected_weights=expected)
            adaptive = Adaptive(history, _promotion(assigned, events, experiment, as_of=as_of))
            reports.append(ExperimentReport(experiment, as_of, result, adaptive, checks))
    return reports


def guardrails(database: Engine, experiment: Experiment, *, as_of: datetime) -> pl.DataFrame:
    """`GUARDRAIL_SCHEMA` for a send experiment: per arm, users with an accepted message at the node by `as_of`,
    and how many of them opened or clicked one (facts reported by `as_of`)."""
    fact = DeliveryFact.__table__  # type: ignore[attr-defined]
    engaged = {
        kind: select(fact.c.send_key).where(fact.c.kind == kind, fact.c.ts <= as_of).scalar_subquery()
        for kind in ("opened", "clicked")
    }
    query = select(
        _OUTBOX.c.user_id,
        _OUTBOX.c.variant,
        _OUTBOX.c.send_key.in_(engaged["opened"]),
        _OUTBOX.c.send_key.in_(engaged["clicked"]),
    ).where(
        _OUTBOX.c.journey == experiment.journey,
        _OUTBOX.c.node == experiment.node,
        _OUTBOX.c.status == "accepted",
        _OUTBOX.c.as_of <= as_of,
        _OUTBOX.c.variant.is_not(None),
    )
    schema = {"user_id": pl.String, "arm": pl.String, "opened": pl.Boolean, "clicked": pl.Boolean}
    with database.connect() as conn:
        frame = read_frame(conn, query, schema)
    order = pl.DataFrame({"arm": list(experiment.weights)})
    per_user = frame.group_by("user_id", "arm").agg(pl.col("opened").any(), pl.col("clicked").any())
    counted = per_user.group_by("arm").agg(
        pl.len().alias("sent"), pl.col("opened").sum().alias("opened"), pl.col("clicked").sum().alias("clicked")
    )
    return order.join(counted, on="arm", how="left").fill_null(0).cast(GUARDRAIL_SCHEMA)  # type: ignore[arg-type]


def _promotion(assigned: pl.DataFrame, events: pl.LazyFrame, experiment: Experiment, *, as_of: datetime) -> Promotion:
    assert experiment.thompson is not None
    conversions, users = settled_results(assigned, events, experiment, as_of=as_of)
    rule = PromotionRule(**experiment.thompson.promotion.model_dump())
    return promotion_decision(conversions, users, rng=experiment_rng(experiment, as_of, "promotion"), rule=rule)
