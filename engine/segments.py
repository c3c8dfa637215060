"""Recompute every segment for the whole population, and who entered or left each since the previous run.

All segments share one feature pass (each windowed count computed once, however many rules read it), then each
rule is one filter. Memberships are Parquet files per segment and as_of: the entered/exited sets of a run are
the difference with the latest earlier as_of, so a rerun or replay of a day compares with the same baseline and
gets the same answer.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import polars as pl

from engine.behaviour import Behaviour
from engine.feature_advance import StatePlan, advance, bootstrap, oldest_needed
from engine.feature_state import FeatureState, FeatureStateStore
from engine.features import DeliveryCount, Feature, with_features
from engine.rules import attribute_columns, predicate, rule_features, segment_refs
from models.segments import SegmentDefinition


@dataclass(frozen=True)
class SegmentChange:
    name: str
    members: pl.Series
    entered: pl.Series
    exited: pl.Series


class SegmentCycleError(ValueError):
    """Segments that reference each other in a loop have no meaning; refused before any run."""


def evaluation_order(definitions: Mapping[str, SegmentDefinition]) -> list[str]:
    """Names ordered so that every referenced segment comes before its referrers."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise SegmentCycleError(f"segments reference each other in a loop: {' -> '.join([*path, name])}")
        if name not in definitions:
            raise KeyError(f"segment {path[-1]!r} references unknown segment {name!r}")
        state[name] = "visiting"
        for ref in segment_refs(definitions[name].rule):
            visit(ref, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in sorted(definitions):
        visit(name, [])
    return order


def compute_memberships(
    definitions: Mapping[str, SegmentDefinition], users: pl.LazyFrame, behaviour: Behaviour
) -> dict[str, pl.Series]:
    """The sorted user ids of each segment at the behaviour's as_of, from all the data."""
    features = [feature for d in definitions.values() for feature in rule_features(d.rule)]
    subjects = users.select(*_read_columns(definitions)).with_columns(pl.col("user_id").alias("subject_id"))
    frame = with_features(subjects, features, behaviour).collect(engine="streaming")
    return _evaluate(definitions, frame, behaviour.as_of)


@dataclass(frozen=True)
class StateRun:
    """How a run that keeps feature state got its memberships: advanced from the state, or in full and why."""

    mode: Literal["incremental", "full"]
    reason: str
    leaving_from_buckets: int = 0
    leaving_raw: int = 0
    recomputed_users: int = 0


def compute_memberships_with_state(
    definitions: Mapping[str, SegmentDefinition],
    users: pl.LazyFrame,
    behaviour: Behaviour,
    store: FeatureStateStore,
    *,
    arrivals: Mapping[str, str],
    persist: bool = True,
) -> tuple[dict[str, pl.Series], StateRun]:
    """The same memberships as `compute_memberships`, advanced from the state of an earlier as_of if it is usable.

    Usable means: computed for the same event features, at an as_of no later than this one, over arrival
    partitions (`arrivals`: load date -> fingerprint, see `engine.rollups.arrival_fingerprints`) unchanged
    since. Otherwise the features are computed in full and, unless the run is earlier than the state (a replay,
    which must not rewind it), a new chain starts from them. `persist=False` (a dry run) writes nothing.
    """
    as_of = behaviour.as_of
    features = [feature for d in definitions.values() for feature in rule_features(d.rule)]
    plan = StatePlan.of(features)
    known = users.select(*dict.fromkeys([*_read_columns(definitions), *plan.attributes])).collect()
    state = store.load()
    seen = {day: fingerprint for day, fingerprint in arrivals.items() if day <= as_of.date().isoformat()}
    reason = _unusable(state, plan, as_of, seen)
    if reason == "earlier than the state":
        return compute_memberships(definitions, users, behaviour), StateRun("full", reason)
    identities = known.select("user_id", *plan.attributes)
    if reason is None:
        assert state is not None
        advanced = advance(plan, state, identities, behaviour, arrivals=seen, buckets=store)
        new_state = advanced.state
        run = StateRun(
            "incremental", f"advanced from {state.as_of.isoformat()}", advanced.leaving_from_buckets,
            advanced.leaving_raw, advanced.recomputed_users,
        )  # fmt: skip
    else:
        new_state = bootstrap(plan, identities, behaviour, arrivals=seen)
        run = StateRun("full", reason)
    frame = _with_state_features(known, features, plan, new_state, behaviour)
    memberships = _evaluate(definitions, frame, as_of)
    if persist:
        if reason is None:
            store.write_buckets(as_of, advanced.buckets)
        else:
            store.clear()
        store.save(new_state)
        store.prune_buckets(before=oldest_needed(plan, as_of), chain=new_state.chain)
    return memberships, run


def _unusable(state: FeatureState | None, plan: StatePlan, as_of: datetime, arrivals: Mapping[str, str]) -> str | None:
    if state is None:
        return "no state"
    if state.key != plan.key:
        return "the segments read other features than the state holds"
    if as_of < state.as_of:
        return "earlier than the state"
    last = state.as_of.date().isoformat()
    if {day: fp for day, fp in arrivals.items() if day <= last} != state.arrivals:
        return f"arrivals up to {last} changed since the state"
    return None


def _with_state_features(
    known: pl.DataFrame, features: list[Feature], plan: StatePlan, state: FeatureState, behaviour: Behaviour
) -> pl.DataFrame:
    """The users with every feature the rules read: stored ones from the state, message engagement computed."""
    ids = known.get_column("user_id")
    dictionary = state.users
    if len(ids) <= len(dictionary) and dictionary.head(len(ids)).equals(ids):
        columns = [state.values.get_column(plan.column(f)).head(len(ids)).alias(f.column) for f in plan.features]
    else:
        lookup = dictionary.to_frame("user_id").with_row_index("ix")
        at = ids.to_frame("user_id").join(lookup, on="user_id", how="left", maintain_order="left").get_column("ix")
        columns = [state.values.get_column(plan.column(f)).gather(at).alias(f.column) for f in plan.features]
    frame = known.with_columns(columns).with_columns(pl.col("user_id").alias("subject_id"))
    others = [f for f in features if isinstance(f, DeliveryCount)]
    if not others:
        return frame
    return with_features(frame.lazy(), others, behaviour).collect()


def _read_columns(definitions: Mapping[str, SegmentDefinition]) -> list[str]:
    """The users' columns the rules read: `user_id`, the attributes tested and the windows' anchors."""
    return list(dict.fromkeys(["user_id", *(name for d in definitions.values() for name in attribute_columns(d.rule))]))


def _evaluate(
    definitions: Mapping[str, SegmentDefinition], frame: pl.DataFrame, as_of: datetime
) -> dict[str, pl.Series]:
    """Each segment's sorted user ids (a filter keeps order: when the users come sorted, nothing is sorted)."""
    presorted = frame.get_column("user_id").is_sorted()
    memberships: dict[str, pl.Series] = {}
    for name in evaluation_order(definitions):
        rule = predicate(definitions[name].rule, as_of=as_of, memberships=memberships)
        members = frame.select(pl.col("user_id").filter(rule)).to_series().rename("user_id")
        memberships[name] = members.set_sorted() if presorted else members.sort()
    return memberships


class MembershipStore:
    """Segment memberships on disk: `segments/<name>/as_of=<UTC stamp>.parquet`, one sorted column."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, name: str, as_of: datetime, members: pl.Series) -> Path:
        path = self.root / name / f"as_of={_stamp(as_of)}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        members.to_frame("user_id").write_parquet(path)
        return path

    def read(self, name: str, as_of: datetime) -> pl.Series | None:
        path = self.root / name / f"as_of={_stamp(as_of)}.parquet"
        return pl.read_parquet(path).get_column("user_id") if path.exists() else None

    def previous(self, name: str, as_of: datetime) -> pl.Series:
        """Members at the latest as_of strictly before this one; empty before the first run."""
        stamps = sorted(
            stamp
            for path in (self.root / name).glob("as_of=*.parquet")
            if (stamp := path.stem.removeprefix("as_of=")) < _stamp(as_of)
        )
        if not stamps:
            return pl.Series("user_id", [], dtype=pl.String)
        return pl.read_parquet(self.root / name / f"as_of={stamps[-1]}.parquet").get_column("user_id")


def diff_memberships(
    memberships: Mapping[str, pl.Series], store: MembershipStore, as_of: datetime
) -> dict[str, SegmentChange]:
    changes = {}
    for name, members in memberships.items():
        before = store.previous(name, as_of)
        changes[name] = SegmentChange(
            name=name,
            members=members,
            entered=members.filter(~members.is_in(before.implode())),
            exited=before.filter(~before.is_in(members.implode())).sort(),
        )
    return changes


def _stamp(as_of: datetime) -> str:
    return as_of.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
