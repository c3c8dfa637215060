"""Split the per-user stages of a run by user, so that shards can run on other machines with the same result.

Shard k of N holds the users whose bucket is k: Iceberg's bucket transform of `user_id`, i.e. MurmurHash3 x86
32-bit (seed 0) of its UTF-8 bytes, its sign bit cleared, modulo N (`engine.rule_buckets.murmur3_32`, vectorized
over a whole column). It is the same in every run, process, machine and library version, and a lake partitioned
with Iceberg's `bucket(N, user_id)` holds exactly shard k in bucket k. (SHA-256, as in `engine.keys`, costs ~2 s
per million users in Python, and every shard hashes every user.)

Why sharding is exact. A YAML segment is a test of one user's attributes and features, and its features are
statistics of that user's own events, rollup rows and deliveries; a segment it references is evaluated for the
same user. So a user's membership computed from only the shard's rows (every row of every shard user, nothing
else) is the membership computed from all rows, and the sorted concatenation of the shards' members is the
single-process membership. A journey instance belongs to one user and reads that user's rows and memberships;
the only population-wide read is a broadcast entry's "has the broadcast happened yet", for which a shard is
given every known instance of the journey, not only its own. Frequency caps, priority and the control group
look across one user's messages only, but they run unsharded anyway, in the flow, with the outbox planning.

Not shardable: a Python segment may compute anything, including statistics of the whole population (the
shipped `top_spenders` keeps the top 10% by spend: a percentile of all buyers, which a shard would take over its
own buyers). A Python segment is sharded only when its file declares `PER_USER = True`, promising that a user's
membership depends on that user's rows alone; every other Python segment is computed once, unsharded, from
all the data.

The steps `segment_shard`, `merge_segments`, `journey_shard` and `merge_journeys` are what the Prefect tasks of
`tasks/shards.py` call: each reads its inputs from the stores and the database named in the settings and leaves
its outputs as Parquet files in a scratch folder of the run (`ShardScratch`), so nothing large travels through
Dask, and a shard can run on any machine that sees the same paths.
"""

import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl
from sqlalchemy import Engine

from engine import pipeline
from engine.allocation import thompson_shares
from engine.behaviour import Behaviour
from engine.db import connect, upsert
from engine.definitions import Definitions, load_definitions
from engine.journey_state import INSTANCE_SCHEMA, SEND_SCHEMA, TRANSITION_SCHEMA, Advance, concat_or_empty
from engine.journey_store import load_active, load_known
from engine.journeys import run_journey, runs_live
from engine.python_segments import PythonSegment, compute_python_memberships
from engine.render import TemplateStore
from engine.rule_buckets import murmur3_32
from engine.segments import MembershipStore, SegmentChange, compute_memberships, diff_memberships, evaluation_order
from engine.settings import EngineSettings
from models.journeys import BroadcastEntry, SegmentEntry
from models.tables import SegmentSize

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)
PER_USER_FLAG = "PER_USER"
_SEGMENT_SIZES = SegmentSize.__table__  # type: ignore[attr-defined]
_MEMBERS = pl.Schema({"user_id": pl.String})
_CHANGES = pl.Schema({"user_id": pl.String, "entered": pl.Boolean})


# --- The shard function -------------------------------------------------------------------------------------


def shard_numbers(user_ids: pl.Series, count: int) -> pl.Series:
    """Each id's shard in 0..count-1 (Iceberg's `bucket(count, user_id)`), as UInt32; null for a null id."""
    if count < 1:
        raise ValueError(f"the number of shards must be at least 1, not {count}")
    hashes = murmur3_32(user_ids.cast(pl.String).fill_null("")) & np.uint32(0x7FFFFFFF)
    numbers = pl.Series(user_ids.name, hashes % np.uint32(count), dtype=pl.UInt32)
    return numbers if not user_ids.has_nulls() else numbers.zip_with(user_ids.is_not_null(), numbers.clear(1))


def shard_expr(count: int, column: str = "user_id") -> pl.Expr:
    """`shard_numbers` as an expression over a column."""
    return pl.col(column).map_batches(
        lambda ids: shard_numbers(ids, count), return_dtype=pl.UInt32, is_elementwise=True
    )


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: the users whose shard number is `index`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count} does not exist")

    def expr(self, column: str = "user_id") -> pl.Expr:
        return shard_expr(self.count, column) == self.index

    def ids(self, *frames: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
        """The distinct `user_id`s of this shard among the frames', each hashed once (events have many rows per
        user), collected: the plans that read a shard's rows semi-join this small frame instead of hashing."""
        distinct = pl.concat([frame.lazy().select("user_id") for frame in frames]).unique()
        return distinct.filter(self.expr()).collect()

    def keep(self, frame: Frame) -> Frame:
        """The rows of this shard's users: the same rows as `frame.filter(self.expr())` (a row without a user is in
        no shard)."""
        return self._semi(frame, self.ids(frame))

    def behaviour(self, behaviour: Behaviour) -> Behaviour:
        """What the run sees of this shard's users: their events, rollup rows and deliveries, at the same as_of."""
        ids = self.ids(behaviour.events, behaviour.rollups, behaviour.deliveries)
        return Behaviour(
            as_of=behaviour.as_of,
            events=self._semi(behaviour.events, ids),
            rollups=self._semi(behaviour.rollups, ids),
            deliveries=self._semi(behaviour.deliveries, ids),
        )

    @staticmethod
    def _semi(frame: Frame, ids: pl.DataFrame) -> Frame:
        if isinstance(frame, pl.LazyFrame):
            return frame.join(ids.lazy(), on="user_id", how="semi")
        return frame.join(ids, on="user_id", how="semi")


def all_shards(count: int) -> list[Shard]:
    return [Shard(index, count) for index in range(count)]


# --- Segments: which are sharded, and the computation ---------------------------------------------------------


def is_per_user(segment: PythonSegment) -> bool:
    """Whether the segment's file declares `PER_USER = True` (see the module docstring)."""
    return getattr(segment.function, "__globals__", {}).get(PER_USER_FLAG) is True


def sharded_python_segments(definitions: Definitions) -> dict[str, PythonSegment]:
    return {name: s for name, s in definitions.python_segments.items() if is_per_user(s)}


def whole_python_segments(definitions: Definitions) -> dict[str, PythonSegment]:
    """The Python segments computed once from all the data: those not declared per user."""
    return {name: s for name, s in definitions.python_segments.items() if not is_per_user(s)}


def shard_memberships(
    definitions: Definitions, users: pl.LazyFrame, behaviour: Behaviour, shard: Shard
) -> dict[str, pl.Series]:
    """The members in this shard of every shardable segment: the single-process computation on the shard's rows."""
    users, behaviour = shard.keep(users), shard.behaviour(behaviour)
    memberships = compute_python_memberships(sharded_python_segments(definitions), users, behaviour)
    return memberships | compute_memberships(definitions.segments, users, behaviour)


def merge_memberships(definitions: Definitions, parts: Iterable[Mapping[str, pl.Series]]) -> dict[str, pl.Series]:
    """Each segment's members over all shards, sorted, in the order the single-process run produces them."""
    gathered: dict[str, list[pl.Series]] = {}
    for part in parts:
        for name, members in part.items():
            gathered.setdefault(name, []).append(members)
    return {
        name: pl.concat(gathered[name]).sort().rename("user_id")
        for name in segment_order(definitions)
        if name in gathered
    }


def segment_order(definitions: Definitions) -> list[str]:
    """Python segments by name, then the YAML ones in evaluation order, as `pipeline.recompute_segments` does."""
    return [*sorted(definitions.python_segments), *evaluation_order(definitions.segments)]


def sharded_memberships(
    definitions: Definitions, users: pl.LazyFrame, behaviour: Behaviour, count: int
) -> dict[str, pl.Series]:
    """Every segment's members, the shardable ones computed shard by shard in this process: the reference the
    distributed run must equal, and a way to bound memory on one machine."""
    merged = merge_memberships(
        definitions, (shard_memberships(definitions, users, behaviour, shard) for shard in all_shards(count))
    )
    whole = compute_python_memberships(whole_python_segments(definitions), users, behaviour)
    return {name: (merged | whole)[name] for name in segment_order(definitions)}


# --- The run's scratch folder -----------------------------------------------------------------------------------


class ShardScratch:
    """What the shards of one run hand each other, under `<home>/shards/<run_id>/`; removed when the run ends.

    `segments/shard=K/<segment>.parquet`: members of a shardable segment in shard K (`user_id`);
    `changes/<segment>.parquet`: every segment's members and whether each entered at this run (`user_id, entered`);
    `journeys/shard=K/<journey>/{new,instances,transitions,sends}.parquet`: a journey's step in shard K.
    """

    def __init__(self, settings: EngineSettings, run_id: str) -> None:
        self.root = settings.home / "shards" / run_id

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def write_members(self, shard: Shard, memberships: Mapping[str, pl.Series]) -> None:
        for name, members in memberships.items():
            _write(members.to_frame("user_id"), self.root / "segments" / f"shard={shard.index}" / f"{name}.parquet")

    def read_members(self, shard: Shard, name: str) -> pl.Series:
        path = self.root / "segments" / f"shard={shard.index}" / f"{name}.parquet"
        return pl.read_parquet(path, schema=_MEMBERS).get_column("user_id")

    def write_changes(self, changes: Mapping[str, SegmentChange]) -> None:
        for name, change in changes.items():
            frame = change.members.to_frame("user_id").with_columns(
                pl.col("user_id").is_in(change.entered.implode()).alias("entered")
            )
            _write(frame, self.root / "changes" / f"{name}.parquet")

    def read_changes(self, shard: Shard) -> tuple[dict[str, pl.Series], dict[str, pl.Series]]:
        """This shard's members of every segment, and those who entered at this run, by segment name."""
        members, entered = {}, {}
        for path in sorted((self.root / "changes").glob("*.parquet")):
            frame = shard.keep(pl.read_parquet(path, schema=_CHANGES))
            members[path.stem] = frame.get_column("user_id")
            entered[path.stem] = frame.filter("entered").get_column("user_id")
        return members, entered

    def write_step(self, shard: Shard, journey: str, new: pl.DataFrame, result: Advance) -> None:
        folder = self._step_folder(shard, journey)
        parts = {"new": new, "instances": result.instances, "transitions": result.transitions, "sends": result.sends}
        for part, frame in parts.items():
            _write(frame, folder / f"{part}.parquet")

    def read_step(self, shard: Shard, journey: str) -> tuple[pl.DataFrame, Advance] | None:
        folder = self._step_folder(shard, journey)
        if not folder.exists():
            return None
        new = pl.read_parquet(folder / "new.parquet", schema=INSTANCE_SCHEMA)
        parts = {part: pl.read_parquet(folder / f"{part}.parquet", schema=schema) for part, schema in _STEPS.items()}
        return new, Advance(**parts)

    def _step_folder(self, shard: Shard, journey: str) -> Path:
        return self.root / "journeys" / f"shard={shard.index}" / journey


_STEPS = {"instances": INSTANCE_SCHEMA, "transitions": TRANSITION_SCHEMA, "sends": SEND_SCHEMA}


def _write(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)


# --- The steps the Prefect tasks call ---------------------------------------------------------------------------


def absolute(settings: EngineSettings) -> EngineSettings:
    """The settings with every path absolute: workers of a Dask cluster need not share the flow's directory."""
    return settings.model_copy(
        update={
            "home": settings.home.resolve(),
            "snapshot_dir": settings.snapshot.resolve(),
            "definitions_dir": settings.definitions_dir.resolve(),
            "templates_dir": settings.templates_dir.resolve(),
            "database_url": settings.database,
        }
    )


def definitions_for(settings: EngineSettings, versions: Mapping[str, str]) -> Definitions:
    """The run's definitions, loaded where a shard runs; refused if any file differs from what the run loaded."""
    definitions = load_definitions(settings.definitions_dir, TemplateStore(settings.templates_dir))
    if definitions.versions != dict(versions):
        changed = sorted(set(definitions.versions.items()) ^ set(versions.items()))
        raise RuntimeError(f"definitions changed since the run loaded them: {sorted({name for name, _ in changed})}")
    return definitions


def segment_shard(ctx: pipeline.RunContext, shard: Shard, versions: Mapping[str, str]) -> dict[str, int]:
    """Compute one shard's members of every shardable segment into the scratch folder; returns their sizes."""
    settings = ctx.settings
    definitions = definitions_for(settings, versions)
    users = pipeline.users_at(settings, ctx.as_of, definitions)
    memberships = shard_memberships(definitions, users, pipeline.behaviour_at(settings, ctx.as_of), shard)
    ShardScratch(settings, ctx.run_id).write_members(shard, memberships)
    return {name: members.len() for name, members in memberships.items()}


def merge_segments(
    ctx: pipeline.RunContext, definitions: Definitions, database: Engine, count: int
) -> dict[str, SegmentChange]:
    """Gather the shards' members, compute the unshardable segments, then diff and store as a single run does."""
    settings = ctx.settings
    scratch = ShardScratch(settings, ctx.run_id)
    shardable = [*sharded_python_segments(definitions), *definitions.segments]
    merged = merge_memberships(
        definitions, ({name: scratch.read_members(shard, name) for name in shardable} for shard in all_shards(count))
    )
    whole = whole_python_segments(definitions)
    if whole:
        users = pipeline.users_at(settings, ctx.as_of, definitions)
        merged |= compute_python_memberships(whole, users, pipeline.behaviour_at(settings, ctx.as_of))
    memberships = {name: merged[name] for name in segment_order(definitions)}
    store = MembershipStore(settings.store_dir / "segments")
    changes = diff_memberships(memberships, store, ctx.as_of)
    if not ctx.dry_run:
        for name, change in changes.items():
            store.write(name, ctx.as_of, change.members)
        with database.begin() as conn:
            upsert(conn, _SEGMENT_SIZES, [pipeline._size_row(ctx, definitions, c) for c in changes.values()])
    scratch.write_changes(changes)
    return changes


def journey_shard(ctx: pipeline.RunContext, shard: Shard, versions: Mapping[str, str]) -> dict[str, int]:
    """Run every live journey for one shard's users into the scratch folder; returns transitions per journey.

    Adaptive send experiments' shares are population-wide: every shard reads (or, first, draws and stores) them
    from all users' events, so all shards use the shares a single-process run would.
    """
    settings = ctx.settings
    definitions = definitions_for(settings, versions)
    scratch = ShardScratch(settings, ctx.run_id)
    users = shard.keep(pipeline.users_at(settings, ctx.as_of, definitions))
    everyone = pipeline.behaviour_at(settings, ctx.as_of)
    behaviour = shard.behaviour(everyone)
    memberships, entered = scratch.read_changes(shard)
    counts = {}
    database = connect(settings.database)
    with database.connect() as conn:
        for name, journey in sorted(definitions.journeys.items()):
            if not runs_live(journey):
                continue
            shares = thompson_shares(
                database, journey, events=everyone.events, as_of=ctx.as_of, run_id=ctx.run_id, store=not ctx.dry_run
            )
            known = load_known(conn, name)
            new, result = run_journey(
                journey,
                definitions.journey_version(name),
                entered=entered[journey.entry.segment] if isinstance(journey.entry, SegmentEntry) else None,
                known=known if isinstance(journey.entry, BroadcastEntry) else shard.keep(known),
                active=shard.keep(load_active(conn, name)),
                users=users,
                behaviour=behaviour,
                memberships=memberships,
                thompson=shares,
            )
            scratch.write_step(shard, name, new, result)
            counts[name] = result.transitions.height
    return counts


def merge_journeys(
    ctx: pipeline.RunContext, definitions: Definitions, database: Engine, count: int
) -> list[pipeline.JourneySummary]:
    """Gather the shards' journey steps, then plan and write the messages as `pipeline.advance_journeys` does.

    Everything after the journeys' steps runs here, unsharded: outbox rows, suppressions, send history and the
    delivery controls.
    """
    settings = ctx.settings
    scratch = ShardScratch(settings, ctx.run_id)
    users = pipeline.users_at(settings, ctx.as_of, definitions)
    steps = {}
    for name, journey in sorted(definitions.journeys.items()):
        if runs_live(journey):
            parts = [part for shard in all_shards(count) if (part := scratch.read_step(shard, name)) is not None]
            steps[name] = _merge_step(parts)
    return pipeline.record_journey_steps(ctx, definitions, database, users, steps)


def _merge_step(parts: list[tuple[pl.DataFrame, Advance]]) -> tuple[pl.DataFrame, Advance]:
    """One journey's step over all shards, sorted as `run_journey` sorts it."""
    results = [result for _, result in parts]
    return concat_or_empty([new for new, _ in parts], INSTANCE_SCHEMA).sort("instance_id"), Advance(
        instances=concat_or_empty([r.instances for r in results], INSTANCE_SCHEMA).sort("instance_id"),
        transitions=concat_or_empty([r.transitions for r in results], TRANSITION_SCHEMA).sort("instance_id", "step"),
        sends=concat_or_empty([r.sends for r in results], SEND_SCHEMA).sort("send_key"),
    )
