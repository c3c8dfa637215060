"""What each node does to the instances at it, as Polars over all of them: where they go next, and why.

`arrive` sets what reaching a node implies (the due time of a wait, the exit at an exit node); `step` moves the
instances that are ready; `plan_sends` lists the messages the send nodes among them planned. Waits are timed
from `node_entered_at`, the moment of arrival.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import polars as pl
from pydantic import BaseModel

from engine.behaviour import Behaviour
from engine.features import with_features
from engine.journey_clock import local_time_dues
from engine.journey_state import MOMENT, SEND_SCHEMA
from engine.keys import key_expr
from engine.rule_buckets import murmur3_32
from engine.rules import predicate, rule_features
from models.durations import format_duration
from models.journeys import (
    AttributeDelay,
    BranchNode,
    DelayNode,
    ExitNode,
    JourneyDefinition,
    LocalTimeDelay,
    SendNode,
    SplitNode,
    WaitForNode,
)
from models.rules import Rule

SPLIT_BUCKETS = 10_000
"""A split arm of weight w out of a total W takes the users whose bucket is in its w / W share of these."""
SHARE_PARTS = 1_000_000
"""A thompson share becomes an integer weight in millionths, finer than the buckets it is cut into."""
ASSIGNED_SCHEMA = pl.Schema({"node": pl.String, "user_id": pl.String, "variant": pl.String})
KEPT = ", kept from an earlier run"


@dataclass(frozen=True)
class ThompsonShares:
    """What the thompson send nodes of a journey assign by at one run (drawn by `engine.allocation`).

    `shares`: node -> variant -> share of the users never assigned at that node, for every thompson node.
    `assigned`: `ASSIGNED_SCHEMA`, one row per node and user assigned at an earlier run: they keep that variant.
    """

    shares: Mapping[str, Mapping[str, float]]
    assigned: pl.DataFrame


def waiting_nodes(journey: JourneyDefinition) -> list[str]:
    return [node_id for node_id, node in journey.nodes.items() if isinstance(node, DelayNode | WaitForNode)]


def exit_nodes(journey: JourneyDefinition) -> list[str]:
    return [node_id for node_id, node in journey.nodes.items() if isinstance(node, ExitNode)]


def arrive(frame: pl.DataFrame, journey: JourneyDefinition, *, users: pl.LazyFrame) -> pl.DataFrame:
    """Instances that just reached `node` at `node_entered_at`: their due time, and exit if it is an exit."""
    due = pl.lit(None, MOMENT)
    exit_reason = pl.lit(None, pl.String)
    timed = _timed_dues(frame, journey, users)
    for node_id, node in journey.nodes.items():
        at = pl.col("node") == node_id
        match node:
            case DelayNode(delay=timedelta() as wait) | WaitForNode(timeout=wait):
                due = pl.when(at).then(pl.col("node_entered_at") + wait).otherwise(due)
            case DelayNode():
                due = pl.when(at).then(pl.col("_timed_due")).otherwise(due)
            case ExitNode():
                exit_reason = pl.when(at).then(pl.lit(node.exit)).otherwise(exit_reason)
    timed_frame = (
        frame.join(timed, on="instance_id", how="left")
        if not timed.is_empty()
        else frame.with_columns(pl.lit(None, MOMENT).alias("_timed_due"))
    )
    return timed_frame.with_columns(
        due.alias("due_at"),
        exit_reason.alias("exit_reason"),
        pl.when(exit_reason.is_not_null()).then(pl.lit("exited")).otherwise(pl.lit("active")).alias("status"),
    ).drop("_timed_due")


def _timed_dues(frame: pl.DataFrame, journey: JourneyDefinition, users: pl.LazyFrame) -> pl.DataFrame:
    """`instance_id, _timed_due` for instances at delays timed by the user: a local time, a date attribute."""
    parts = [pl.DataFrame(schema={"instance_id": pl.String, "_timed_due": MOMENT})]
    timed = {
        node_id: node.delay
        for node_id, node in journey.nodes.items()
        if isinstance(node, DelayNode) and not isinstance(node.delay, timedelta)
    }
    columns = users.collect_schema() if timed else pl.Schema()
    for node_id, delay in timed.items():
        here = frame.filter(pl.col("node") == node_id).select("instance_id", "user_id", "node_entered_at")
        if here.is_empty():
            continue
        if isinstance(delay, LocalTimeDelay):
            zone = pl.col("timezone") if "timezone" in columns else pl.lit(None, pl.String).alias("timezone")
            zones = users.select("user_id", zone)
            arrivals = here.lazy().join(zones, on="user_id", how="left").rename({"node_entered_at": "arrived"})
            dues = local_time_dues(arrivals.collect(), delay.until_local_time)
            parts.append(dues.select("instance_id", pl.col("due").alias("_timed_due")))
        else:
            name = delay.until_attribute
            dated = _as_moment(pl.col(name), columns[name], name) if name in columns else pl.lit(None, MOMENT)
            dates = users.select("user_id", dated.alias("_date"))
            parts.append(
                here.lazy()
                .join(dates, on="user_id", how="left")
                .select("instance_id", (pl.col("_date") + delay.offset).alias("_timed_due"))
                .collect()
            )
    return pl.concat(parts)


def _as_moment(column: pl.Expr, dtype: pl.DataType, name: str) -> pl.Expr:
    """A date or datetime attribute as a UTC instant: a date means its midnight UTC, a naive time is UTC."""
    if dtype == pl.Date:
        return column.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if isinstance(dtype, pl.Datetime):
        zoned = column.dt.replace_time_zone("UTC") if dtype.time_zone is None else column.dt.convert_time_zone("UTC")
        return zoned.dt.cast_time_unit("us")
    raise TypeError(f"attribute {name!r} is {dtype}: a delay until it needs a date or a datetime")


def step(
    journey: JourneyDefinition,
    ready: pl.DataFrame,
    *,
    users: pl.LazyFrame,
    behaviour: Behaviour,
    memberships: dict[str, pl.Series],
    thompson: ThompsonShares | None = None,
) -> pl.DataFrame:
    """For each ready instance, the node it moves to (`next`), why (`reason`), and its `arm` after a split.

    `ready` carries `matched_at` / `match_reason` for instances whose wait-for matched; `thompson` is as in
    `send_variants`.
    """
    as_of = behaviour.as_of
    branching = pl.col("node").is_in(
        [node_id for node_id, node in journey.nodes.items() if isinstance(node, BranchNode)]
    )
    featured = with_rule_features(ready.filter(branching), _branch_rules(journey), users=users, behaviour=behaviour)
    frame = pl.concat([featured, ready.filter(~branching).lazy()], how="diagonal_relaxed")  # features only where read
    frame = frame.join(split_arms(journey, ready).lazy(), on="instance_id", how="left").join(
        send_variants(journey, ready, thompson).lazy(), on="instance_id", how="left"
    )
    next_node = pl.lit(None, pl.String)
    reason = pl.lit(None, pl.String)
    for node_id, node in journey.nodes.items():
        at = pl.col("node") == node_id
        match node:
            case DelayNode():
                next_node = pl.when(at).then(pl.lit(node.next)).otherwise(next_node)
                reason = pl.when(at).then(_waited(node)).otherwise(reason)
            case SendNode():
                planned = (
                    pl.lit(f"{node.send.channel} {node.send.template}")
                    if node.send.template
                    else pl.format(f"{node.send.channel} {{}} (variant {{}}{{}})", "_template", "_variant", "_note")
                )
                why = (
                    pl.when(pl.col("holdout"))
                    .then(pl.format("holdout: no {}", planned))
                    .otherwise(pl.format("planned {}", planned))
                )
                next_node = pl.when(at).then(pl.lit(node.next)).otherwise(next_node)
                reason = pl.when(at).then(why).otherwise(reason)
            case BranchNode():
                chosen = pl.lit(node.otherwise)
                why = pl.lit("otherwise")
                for number, case in reversed(list(enumerate(node.branch, start=1))):
                    holds = predicate(case.when, as_of=as_of, memberships=memberships)
                    chosen = pl.when(holds).then(pl.lit(case.next)).otherwise(chosen)
                    why = pl.when(holds).then(pl.lit(f"case {number} held: {describe(case.when)}")).otherwise(why)
                next_node = pl.when(at).then(chosen).otherwise(next_node)
                reason = pl.when(at).then(why).otherwise(reason)
            case WaitForNode():
                matched = pl.col("matched_at").is_not_null()
                timed_out = pl.lit(f"timed out after {format_duration(node.timeout)}")
                next_node = (
                    pl.when(at).then(pl.when(matched).then(pl.lit(node.matched)).otherwise(pl.lit(node.timed_out)))
                ).otherwise(next_node)
                why = pl.when(matched).then(pl.format("matched: {}", "match_reason")).otherwise(timed_out)
                reason = pl.when(at).then(why).otherwise(reason)
            case SplitNode():
                next_node = pl.when(at).then(pl.col("_arm_next")).otherwise(next_node)
                reason = pl.when(at).then(pl.col("_arm_reason")).otherwise(reason)
    return (
        frame.with_columns(next_node.alias("next"), reason.alias("reason"), pl.coalesce("_arm", "arm").alias("arm"))
        .select([*ready.columns, "next", "reason"])
        .collect()
    )


def with_rule_features(
    frame: pl.DataFrame, rules: list[Rule], *, users: pl.LazyFrame, behaviour: Behaviour
) -> pl.LazyFrame:
    """The instances with the users' attributes and every feature the rules read joined on (nothing if none)."""
    if not rules:
        return frame.lazy()
    subjects = (
        frame.lazy().join(users, on="user_id", how="left").with_columns(pl.col("instance_id").alias("subject_id"))
    )
    features = [feature for rule in rules for feature in rule_features(rule)]
    return with_features(subjects, features, behaviour)


def split_arms(journey: JourneyDefinition, ready: pl.DataFrame) -> pl.DataFrame:
    """`instance_id, _arm, _arm_next, _arm_reason` for instances at split nodes.

    The bucket is MurmurHash3 of `<journey>:<node>:<user_id>` modulo 10,000 (see `engine.rule_buckets`): the
    user's arm does not depend on the instance, the run or the process, so it is sticky across re-entries, and
    a change of weights moves only the users whose bucket changes sides.
    """
    choices = []
    for node_id, node in journey.nodes.items():
        if isinstance(node, SplitNode):
            total = sum(arm.weight for arm in node.split)
            for arm, (low, high) in zip(node.split, _shares([arm.weight for arm in node.split]), strict=True):
                why = f"split {node_id}: arm {arm.label} (weight {arm.weight} of {total})"
                choices.append((node_id, low, high, arm.label, arm.next, why))
    schema = {"_arm": pl.String, "_arm_next": pl.String, "_arm_reason": pl.String}
    return _by_bucket(journey.name, ready, choices, schema)


def send_variants(
    journey: JourneyDefinition, frame: pl.DataFrame, thompson: ThompsonShares | None = None
) -> pl.DataFrame:
    """`instance_id, _variant, _template, _note` for instances at send nodes with variants.

    A fixed send uses the same sticky bucket as a split over its weights, so it assigns users exactly as a split
    of the same weights would. A thompson send cuts the same bucket by this run's shares, for users never
    assigned at the node; a user assigned at an earlier run keeps that variant while it is still defined. Without
    `thompson` (a simulation has no results) its shares are the starting ones. `_note` is what the transition's
    reason adds after the variant: the share used, or that the variant was kept.
    """
    choices = []
    for node_id, node in journey.nodes.items():
        if isinstance(node, SendNode) and node.send.variants:
            spec = node.send
            if spec.allocation == "thompson":
                shares = thompson.shares[node_id] if thompson else spec.starting_shares
                weights = [round(shares[variant.variant] * SHARE_PARTS) for variant in spec.variants]
                notes = [f", share {shares[variant.variant]:.1%}" for variant in spec.variants]
            else:
                weights, notes = [variant.weight for variant in spec.variants], [""] * len(spec.variants)
            for variant, (low, high), note in zip(spec.variants, _shares(weights), notes, strict=True):
                choices.append((node_id, low, high, variant.variant, variant.template, note))
    schema = {"_variant": pl.String, "_template": pl.String, "_note": pl.String}
    bucketed = _by_bucket(journey.name, frame, choices, schema)
    if thompson is None or thompson.assigned.is_empty():
        return bucketed
    kept = _kept_variants(journey, frame, thompson.assigned)
    return pl.concat([bucketed.join(kept, on="instance_id", how="anti"), kept])


def _kept_variants(journey: JourneyDefinition, frame: pl.DataFrame, assigned: pl.DataFrame) -> pl.DataFrame:
    """The instances at thompson nodes whose user was assigned there earlier, with that variant if still defined."""
    defined = pl.DataFrame(
        [
            (node_id, variant.variant, variant.template)
            for node_id, node in journey.nodes.items()
            if isinstance(node, SendNode) and node.send.allocation == "thompson"
            for variant in node.send.variants or []
        ],
        schema={"node": pl.String, "variant": pl.String, "_template": pl.String},
        orient="row",
    )
    return (
        frame.select("instance_id", "node", "user_id")
        .join(assigned.select(ASSIGNED_SCHEMA.names()), on=["node", "user_id"])
        .join(defined, on=["node", "variant"])
        .select("instance_id", pl.col("variant").alias("_variant"), "_template", pl.lit(KEPT).alias("_note"))
    )


def _shares(weights: list[int]) -> list[tuple[int, int]]:
    """Each weight's [low, high) range of the buckets, in order, covering all of them."""
    total, cumulative, ranges = sum(weights), 0, []
    for weight in weights:
        low = cumulative * SPLIT_BUCKETS // total
        cumulative += weight
        ranges.append((low, cumulative * SPLIT_BUCKETS // total))
    return ranges


def _by_bucket(journey: str, frame: pl.DataFrame, choices: list[tuple], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Per instance at a node of `choices` (node, low, high, *values), the values of the range its bucket is in."""
    empty = pl.DataFrame(schema={"instance_id": pl.String, **schema})
    if not choices:
        return empty
    table = pl.DataFrame(choices, schema=["node", "_low", "_high", *schema], orient="row").with_columns(
        pl.col("_low", "_high").cast(pl.Int64)
    )
    here = frame.filter(pl.col("node").is_in(table.get_column("node").unique().implode())).select(
        "instance_id", "node", "user_id"
    )
    if here.is_empty():
        return empty
    keys = here.select(pl.format("{}:{}:{}", pl.lit(journey), "node", "user_id")).to_series()
    buckets = pl.Series("_bucket", murmur3_32(keys) % SPLIT_BUCKETS, dtype=pl.Int64)
    return (
        here.with_columns(buckets)
        .join(table, on="node")
        .filter(pl.col("_bucket") >= pl.col("_low"), pl.col("_bucket") < pl.col("_high"))
        .select(empty.columns)
    )


def plan_sends(
    journey: JourneyDefinition, moved: pl.DataFrame, *, version: str | None, thompson: ThompsonShares | None = None
) -> pl.DataFrame:
    """The messages planned by instances leaving send nodes; held-out instances plan none.

    The send key is the instance, its step and node: the same on every rerun of the run that took the step. The
    variant is `send_variants`' with the same `thompson`, so a message carries the variant its reason names.
    """
    send_nodes = {node_id: node for node_id, node in journey.nodes.items() if isinstance(node, SendNode)}
    at_send = moved.filter(pl.col("node").is_in(list(send_nodes)), ~pl.col("holdout"))
    at_send = at_send.join(send_variants(journey, at_send, thompson), on="instance_id", how="left")
    channel = pl.lit(None, pl.String)
    template = pl.col("_template")
    transactional = pl.lit(None, pl.Boolean)
    for node_id, node in send_nodes.items():
        at = pl.col("node") == node_id
        channel = pl.when(at).then(pl.lit(node.send.channel)).otherwise(channel)
        if node.send.template:
            template = pl.when(at).then(pl.lit(node.send.template)).otherwise(template)
        transactional = pl.when(at).then(pl.lit(node.send.transactional)).otherwise(transactional)
    return at_send.select(
        key_expr(pl.col("instance_id"), pl.col("steps") + 1, pl.col("node")).alias("send_key"),
        "instance_id",
        "journey",
        (pl.col("version") if version is None else pl.lit(version)).alias("version"),
        "user_id",
        "node",
        channel.alias("channel"),
        template.alias("template"),
        pl.col("_variant").alias("variant"),
        transactional.alias("transactional"),
        pl.lit(journey.priority, pl.Int64).alias("priority"),
    ).select(SEND_SCHEMA.names())


def describe(rule: object) -> str:
    """A rule in its YAML flow form, compact enough for a transition's reason."""
    assert isinstance(rule, BaseModel)
    return json.dumps(rule.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":"))


def _branch_rules(journey: JourneyDefinition) -> list[Rule]:
    return [case.when for node in journey.nodes.values() if isinstance(node, BranchNode) for case in node.branch]


def _waited(node: DelayNode) -> pl.Expr:
    match node.delay:
        case LocalTimeDelay(until_local_time=wall):
            return pl.lit(f"waited until {wall:%H:%M} local time")
        case AttributeDelay(until_attribute=name, offset=offset):
            sign = "-" if offset < timedelta(0) else "+"
            shift = "" if offset == timedelta(0) else f" {sign} {format_duration(abs(offset))}"
            return (
                pl.when(pl.col("due_at").is_null())
                .then(pl.lit(f"did not wait: no {name}"))
                .when(pl.col("due_at") <= pl.col("node_entered_at"))
                .then(pl.lit(f"did not wait: {name}{shift} had passed"))
                .otherwise(pl.lit(f"waited until {name}{shift}"))
            )
        case _:
            assert isinstance(node.delay, timedelta)
            return pl.lit(f"waited {format_duration(node.delay)}")
