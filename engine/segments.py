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

import polars as pl

from engine.behaviour import Behaviour
from engine.features import with_features
from engine.rules import predicate, rule_features, segment_refs
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
    """The sorted user ids of each segment at the behaviour's as_of."""
    features = [feature for d in definitions.values() for feature in rule_features(d.rule)]
    subjects = users.with_columns(pl.col("user_id").alias("subject_id"))
    frame = with_features(subjects, features, behaviour).collect()
    memberships: dict[str, pl.Series] = {}
    for name in evaluation_order(definitions):
        rule = predicate(definitions[name].rule, as_of=behaviour.as_of, memberships=memberships)
        memberships[name] = frame.filter(rule).get_column("user_id").sort().rename("user_id")
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
