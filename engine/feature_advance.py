"""Segment features at a new as_of from the state at an earlier one: exact, and touching only what changed.

Between a state at t1 and a run at t2 >= t1 the visible events only grow (nothing visible at t1 may have changed:
the caller checks each arrival partition's fingerprint), and every window's start and end only move forward. So
for one feature, the rows that count at t2 and did not at t1 are the newly visible rows inside its window at t2
(`arrived`: from arrival partitions after t1's date, or that happened at t1 or later), and the rows that counted
at t1 and no longer do are those of the interval its start moved across (`leaving`: [start at t1, start at t2)).
Then:

- a count is the old count plus the arrived rows minus the leaving ones, in integers, so it is exact;
- a min, max, first or last is combined with the arrived rows' for users with nothing leaving, and recomputed
  from the data for users with something leaving (a leaving extreme cannot be subtracted);
- a sum or average is recomputed for every user with rows arriving or leaving: float addition is not
  associative, so a value kept by adding and subtracting days could differ in its last bit from a sum taken
  afresh, and a threshold could turn that bit into a different member;
- a window of each subject's own (`after: signed_up_at`, `after_first: purchase`) loses no rows while its start
  stays put; users whose start moved (the attribute was edited, a late event moved a first purchase earlier)
  are recomputed.

Leaving rows come from the buckets of the state's chain when the leaving interval is made of whole intervals
between runs of the chain (daily runs at one time of day, windows of whole days), else from the raw events.
Recomputing reuses the full pass (`engine.features`) over only the users concerned, so a recomputed value is
what a full recompute gives. Users are numbered by the state's dictionary: arrays indexed by that number
replace joins for everything but the rows that arrived.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np
import polars as pl

from engine.behaviour import Behaviour, EventFilter
from engine.feature_state import FeatureState
from engine.features import EventStat, Feature, first_seen, per_user_features, with_subject_features
from engine.rule_windows import constant_bounds, is_constant, subject_bounds
from models.rules import Window

ANCHOR = "_anchor"


class Buckets(Protocol):
    """Where recorded intervals are read from (`engine.feature_state.FeatureStateStore`)."""

    def read_buckets(self, starts: Iterable[datetime], chain: Iterable[datetime]) -> pl.DataFrame: ...


@dataclass(frozen=True)
class StatePlan:
    """The event features a state holds, in a fixed order, with the windows whose per-user start it keeps."""

    features: tuple[EventStat, ...]
    anchors: tuple[Window, ...]

    @staticmethod
    def of(features: Iterable[Feature]) -> StatePlan:
        stored = {f for f in features if isinstance(f, EventStat)}
        stored |= {first_seen(f.window.after_first) for f in stored if f.window and f.window.after_first}
        ordered = tuple(sorted(stored, key=lambda f: f.column))
        windows = {_window_key(f.window): f.window for f in ordered if f.window and not is_constant(f.window)}
        return StatePlan(ordered, tuple(windows[key] for key in sorted(windows)))

    @property
    def key(self) -> str:
        """Changes exactly when the set of stored features does: thresholds and attribute tests may change freely."""
        return hashlib.sha256(json.dumps([f.column for f in self.features]).encode()).hexdigest()[:32]

    @property
    def selections(self) -> tuple[EventFilter, ...]:
        """Selections of windows that slide (`last`): what buckets count, in this order."""
        sliding = {f.events for f in self.features if f.window is not None and f.window.last is not None}
        return tuple(sorted(sliding, key=lambda s: (s.event, json.dumps(s.where))))

    @property
    def attributes(self) -> list[str]:
        """The users' columns the per-subject windows start from."""
        return sorted({_attribute(w) for w in self.anchors if w.after_first is None})

    def column(self, feature: EventStat) -> str:
        return f"f{self.features.index(feature)}"

    def anchor_column(self, window: Window) -> str:
        return f"a{self.anchors.index(window)}"


@dataclass(frozen=True)
class Advanced:
    """The state at the new as_of, what the run saw arrive (per interval start: `ix, sel, n`), and how."""

    state: FeatureState
    buckets: dict[datetime, pl.DataFrame]
    leaving_from_buckets: int
    leaving_raw: int
    recomputed_users: int


def bootstrap(
    plan: StatePlan, users: pl.DataFrame, behaviour: Behaviour, *, arrivals: Mapping[str, str]
) -> FeatureState:
    """The state at the behaviour's as_of, computed from all the data: where a chain starts.

    `users` holds `user_id` and the plan's attributes.
    """
    constant = [f for f in plan.features if is_constant(f.window)]
    per_user = per_user_features(constant, behaviour).collect(engine="streaming")
    extra = per_user.select("user_id").join(users.select("user_id"), on="user_id", how="anti", maintain_order="left")
    dictionary = pl.concat([users.get_column("user_id"), extra.get_column("user_id")])
    frame = dictionary.to_frame("user_id").join(per_user, on="user_id", how="left", maintain_order="left")
    values = {plan.column(f): _filled(frame.get_column(f.column), f) for f in constant}
    attributes = _aligned_attributes(plan, users, dictionary)
    per_subject = [f for f in plan.features if not is_constant(f.window)]
    if per_subject:
        fresh = _subject_features(plan, per_subject, dictionary, values, attributes, behaviour)
        values |= {plan.column(f): fresh[f.column] for f in per_subject}
    values |= {plan.anchor_column(w): s for w, s in _anchors(plan, values, attributes).items()}
    as_of = behaviour.as_of
    return FeatureState(as_of, plan.key, dict(arrivals), (as_of,), dictionary, _frame(plan, values))


def advance(
    plan: StatePlan,
    state: FeatureState,
    users: pl.DataFrame,
    behaviour: Behaviour,
    *,
    arrivals: Mapping[str, str],
    buckets: Buckets | None,
) -> Advanced:
    """The state at the behaviour's as_of (t2) from `state` at t1 <= t2, over the same data visible at t1."""
    t1, t2 = state.as_of, behaviour.as_of
    if t2 < t1 or state.key != plan.key:
        raise ValueError("a state advances only to a later as_of, for the features it was computed for")
    arrived = _arrived_rows(plan, behaviour, t1)
    dictionary = _Dictionary(state.users)
    ix = dictionary.index(arrived.get_column("user_id"), grow=True)
    dictionary.index(users.get_column("user_id"), grow=True)
    arrived = arrived.with_columns(pl.Series("ix", ix, dtype=pl.UInt32))
    size = len(dictionary.ids)
    old = {name: _padded(plan, state.values.get_column(name), size) for name in state.values.columns}
    chain = state.chain if t2 == t1 else (*state.chain, t2)
    selections = _selections(plan)
    tested = arrived.select(s.expr().alias(f"m{i}") for i, s in enumerate(selections))
    masks = {s: tested.get_column(f"m{i}").to_numpy() for i, s in enumerate(selections)}
    leaving = _Leaving(plan, state, behaviour, dictionary, buckets)
    for feature in (f for f in plan.features if is_constant(f.window)):
        start1, end1 = constant_bounds(feature.window, t1)
        leaving.want(feature.events, start1, min(end1, constant_bounds(feature.window, t2)[0]))
    values: dict[str, pl.Series] = {}
    recompute: dict[EventStat, np.ndarray] = {}
    ts = arrived.get_column("ts")
    for feature in (f for f in plan.features if is_constant(f.window)):
        start1, end1 = constant_bounds(feature.window, t1)
        start2, end2 = constant_bounds(feature.window, t2)
        inside = masks[feature.events] & ((ts >= start2) & (ts < end2)).to_numpy()
        gone = leaving.counts(feature.events, start1, min(end1, start2))
        column = plan.column(feature)
        values[column], redo = _updated(feature, old[column], arrived, inside, gone)
        if redo is not None:
            recompute[feature] = redo
    attributes = _aligned_attributes(plan, users, dictionary.ids)
    anchors = _anchors(plan, values, attributes)
    for feature in (f for f in plan.features if not is_constant(f.window)):
        assert feature.window is not None
        before, now = old[plan.anchor_column(feature.window)], anchors[feature.window]
        moved = np.ones(size, bool) if before.dtype != now.dtype else before.ne_missing(now).to_numpy()
        start, end = _bounds(feature.window, now, t2)
        ixs = arrived.get_column("ix")
        within = (ts >= start.gather(ixs)) & (ts < end.gather(ixs))
        inside = masks[feature.events] & within.fill_null(False).to_numpy()
        column = plan.column(feature)
        values[column], redo = _updated(feature, old[column], arrived, inside, None)
        redo = moved if redo is None else redo | moved
        if redo.any():
            recompute[feature] = redo
    recomputed = _recompute(plan, recompute, dictionary.ids, values, attributes, behaviour)
    values |= {plan.anchor_column(w): s for w, s in anchors.items()}
    new_state = FeatureState(t2, plan.key, dict(arrivals), chain, dictionary.ids, _frame(plan, values))
    rows = _bucket_rows(plan, arrived, masks, chain)
    return Advanced(new_state, rows, leaving.from_buckets, leaving.raw, recomputed)


def oldest_needed(plan: StatePlan, as_of: datetime) -> datetime:
    """The earliest instant a later run may subtract: no sliding window will start before its start now."""
    starts = [constant_bounds(f.window, as_of)[0] for f in plan.features if f.window and f.window.last]
    return min(starts, default=as_of)


class _Leaving:
    """Per user, how many rows of a selection visible at t1 happened in an interval: from buckets, else raw.

    Every interval is asked for first (`want`), so the raw ones are read in one scan of the events.
    """

    def __init__(
        self, plan: StatePlan, state: FeatureState, behaviour: Behaviour, users: _Dictionary, buckets: Buckets | None
    ) -> None:
        self.plan, self.state, self.behaviour, self.users, self.buckets = plan, state, behaviour, users, buckets
        self.wanted: set[tuple[EventFilter, datetime, datetime]] = set()
        self.cache: dict[tuple[EventFilter, datetime, datetime], np.ndarray | None] = {}
        self.from_buckets = self.raw = 0

    def want(self, selection: EventFilter, start: datetime, end: datetime) -> None:
        if start < end:
            self.wanted.add((selection, start, end))

    def counts(self, selection: EventFilter, start: datetime, end: datetime) -> np.ndarray | None:
        """None when nothing leaves."""
        if start >= end:
            return None
        if not self.cache:
            self._fetch()
        return self.cache[(selection, start, end)]

    def _recorded(self, selection: EventFilter, start: datetime, end: datetime) -> bool:
        chain = self.state.chain
        return self.buckets is not None and selection in self.plan.selections and start in chain and end in chain

    def _fetch(self) -> None:
        size = len(self.users.ids)
        chain = self.state.chain
        raw = []
        for key in sorted(self.wanted, key=lambda k: (k[1], k[2], k[0].event, json.dumps(k[0].where))):
            selection, start, end = key
            if not self._recorded(selection, start, end):
                raw.append(key)
                continue
            assert self.buckets is not None
            self.from_buckets += 1
            rows = self.buckets.read_buckets([run for run in chain if start <= run < end], chain)
            rows = rows.filter(pl.col("sel") == self.plan.selections.index(selection))
            ix, n = rows.get_column("ix").to_numpy(), rows.get_column("n").to_numpy()
            self.cache[key] = _bincount(ix, size, n) if len(ix) else None
        if not raw:
            return
        self.raw += len(raw)
        t1 = self.state.as_of
        inside = pl.any_horizontal(
            (pl.col("ts") >= start) & (pl.col("ts") < end) & selection.expr() for selection, start, end in raw
        )
        columns = ["user_id", "event", "ts", *(["properties"] if any(key[0].where for key in raw) else [])]
        rows = (
            self.behaviour.events.filter(
                pl.col("load_date") <= t1.date(),
                pl.col("ts") >= min(key[1] for key in raw),
                pl.col("ts") < min(t1, max(key[2] for key in raw)),
                inside,
            )
            .select(columns)
            .collect()
        )
        ix = self.users.index(rows.get_column("user_id"), grow=False) if rows.height else np.zeros(0, np.int64)
        for selection, start, end in raw:
            held = rows.select((pl.col("ts") >= start) & (pl.col("ts") < end) & selection.expr()).to_series()
            picked = ix[held.to_numpy()]
            self.cache[(selection, start, end)] = _bincount(picked, size) if len(picked) else None


class _Dictionary:
    """The state's users, numbered by position; ids never seen before are appended."""

    def __init__(self, ids: pl.Series) -> None:
        self.ids = ids
        self._lookup: pl.DataFrame | None = None

    def index(self, ids: pl.Series, *, grow: bool) -> np.ndarray:
        """Each id's position, appending unknown ids (in first-seen order) when `grow`, else refusing them."""
        if len(ids) <= len(self.ids) and self.ids.head(len(ids)).equals(ids):
            return np.arange(len(ids))
        if self._lookup is None:
            self._lookup = self.ids.to_frame("user_id").with_row_index("ix")
        frame = ids.to_frame("user_id").join(self._lookup, on="user_id", how="left", maintain_order="left")
        found = frame.get_column("ix")
        if found.null_count():
            if not grow:
                raise ValueError("a user with leaving rows is missing from the state's dictionary")
            new = ids.filter(found.is_null()).unique(maintain_order=True)
            extra = new.to_frame("user_id").with_row_index("ix", offset=len(self.ids))
            self.ids = pl.concat([self.ids, new])
            self._lookup = pl.concat([self._lookup, extra])
            found = (
                ids.to_frame("user_id").join(extra, on="user_id", how="left", maintain_order="left").get_column("ix")
            )
            found = frame.get_column("ix").fill_null(found)
        return found.to_numpy()


def _arrived_rows(plan: StatePlan, behaviour: Behaviour, t1: datetime) -> pl.DataFrame:
    """The rows visible at the behaviour's as_of and not at t1, of every event a feature reads."""
    names = sorted({f.events.event for f in plan.features})
    columns = ["user_id", "event", "ts"]
    if any(f.stat in ("sum", "avg", "min", "max") for f in plan.features):
        columns.append("value")
    if any(f.events.where for f in plan.features):
        columns.append("properties")
    new = (pl.col("load_date") > t1.date()) | (pl.col("ts") >= t1)
    return behaviour.events.filter(pl.col("event").is_in(names), new).select(columns).collect()


def _updated(
    feature: EventStat, old: pl.Series, arrived: pl.DataFrame, inside: np.ndarray, gone: np.ndarray | None
) -> tuple[pl.Series, np.ndarray | None]:
    """The feature after the arrived rows `inside` its window and the leaving counts; and whom to recompute."""
    size = len(old)
    ix = arrived.get_column("ix").to_numpy()[inside]
    if feature.stat == "count":
        if not len(ix) and gone is None:
            return old, None
        total = old.to_numpy().astype(np.int64)
        total += np.bincount(ix, minlength=size)
        if gone is not None:
            total -= gone
            if total.min(initial=0) < 0:
                raise ValueError(f"state of {feature.column} is inconsistent with the data: a negative count")
        return pl.Series(old.name, total.astype(np.uint32), dtype=pl.UInt32), None
    redo = np.zeros(size, bool) if gone is None else gone > 0
    if feature.stat in ("sum", "avg"):
        redo[ix] = True
        return old, redo if redo.any() else None
    if len(ix):
        lowest = feature.stat in ("min", "first")
        source = pl.col("ts" if feature.stat in ("first", "last") else "value")
        rows = arrived.filter(pl.Series(inside))
        picked = rows.group_by("ix").agg((source.min() if lowest else source.max()).alias("v"))
        fresh = pl.repeat(None, size, dtype=old.dtype, eager=True).scatter(
            picked.get_column("ix"), picked.get_column("v")
        )
        combined = (pl.min_horizontal if lowest else pl.max_horizontal)(pl.col("old"), pl.col("new"))
        old = pl.DataFrame({"old": old, "new": fresh}).select(combined.cast(old.dtype).alias(old.name)).to_series()
    return old, redo if redo.any() else None


def _recompute(
    plan: StatePlan,
    recompute: Mapping[EventStat, np.ndarray],
    dictionary: pl.Series,
    values: dict[str, pl.Series],
    attributes: Mapping[str, pl.Series],
    behaviour: Behaviour,
) -> int:
    """Recompute, from the data, the features of the users marked for each, into `values`; how many users."""
    if not recompute:
        return 0
    marked = np.logical_or.reduce(list(recompute.values()))
    who = np.flatnonzero(marked)
    ids = dictionary.gather(who)
    only = pl.col("user_id").is_in(ids.implode())
    narrowed = Behaviour(
        behaviour.as_of, behaviour.events.filter(only), behaviour.rollups.filter(only), behaviour.deliveries
    )
    constant = [f for f in recompute if is_constant(f.window)]
    if constant:
        fresh = per_user_features(constant, narrowed).collect()
        frame = ids.to_frame("user_id").join(fresh, on="user_id", how="left", maintain_order="left")
        for feature in constant:
            column = plan.column(feature)
            values[column] = values[column].clone().scatter(who, _filled(frame.get_column(feature.column), feature))
    per_subject = [f for f in recompute if not is_constant(f.window)]
    if per_subject:
        mine = {name: series.gather(who) for name, series in values.items()}
        theirs = {name: series.gather(who) for name, series in attributes.items()}
        fresh_subject = _subject_features(plan, per_subject, ids, mine, theirs, narrowed)
        for feature in per_subject:
            column = plan.column(feature)
            values[column] = values[column].clone().scatter(who, fresh_subject[feature.column])
    return len(who)


def _subject_features(
    plan: StatePlan,
    features: Sequence[EventStat],
    ids: pl.Series,
    values: Mapping[str, pl.Series],
    attributes: Mapping[str, pl.Series],
    behaviour: Behaviour,
) -> dict[str, pl.Series]:
    """Per-subject features of these users (subjects are users here), in their order, by feature column."""
    firsts = {f.column: values[plan.column(f)] for f in plan.features if f.stat == "first" and f.window is None}
    subjects = pl.DataFrame({"user_id": ids, "subject_id": ids, **attributes, **firsts})
    frame = with_subject_features(subjects.lazy(), features, behaviour).select(
        "subject_id", *(f.column for f in features)
    )
    ordered = ids.to_frame("subject_id").join(frame.collect(), on="subject_id", how="left", maintain_order="left")
    return {f.column: _filled(ordered.get_column(f.column), f) for f in features}


def _anchors(
    plan: StatePlan, values: Mapping[str, pl.Series], attributes: Mapping[str, pl.Series]
) -> dict[Window, pl.Series]:
    """What each per-subject window starts from, per user: the attribute, or the first such event."""
    return {
        window: values[plan.column(first_seen(window.after_first))]
        if window.after_first is not None
        else attributes[_attribute(window)]
        for window in plan.anchors
    }


def _bounds(window: Window, anchor: pl.Series, as_of: datetime) -> tuple[pl.Series, pl.Series]:
    """[start, end) per user of a per-subject window, from what it starts from."""
    start, end = subject_bounds(window.model_copy(update={"after": ANCHOR, "after_first": None, "since": None}), as_of)
    frame = pl.DataFrame({ANCHOR: anchor}).select(start.alias("start"), end.alias("end"))
    return frame.get_column("start"), frame.get_column("end")


def _aligned_attributes(plan: StatePlan, users: pl.DataFrame, dictionary: pl.Series) -> dict[str, pl.Series]:
    """The users' window attributes in dictionary order; null for ids the users table lacks."""
    if not plan.attributes:
        return {}
    ids = users.get_column("user_id")
    if len(ids) <= len(dictionary) and dictionary.head(len(ids)).equals(ids):
        return {
            name: users.get_column(name).extend_constant(None, len(dictionary) - len(ids)) for name in plan.attributes
        }
    frame = dictionary.to_frame("user_id").join(users, on="user_id", how="left", maintain_order="left")
    return {name: frame.get_column(name) for name in plan.attributes}


def _bincount(ix: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    if not len(ix):
        return np.zeros(size, np.int64)
    if weights is None:
        return np.bincount(ix, minlength=size).astype(np.int64, copy=False)
    return np.rint(np.bincount(ix, weights=weights.astype(np.float64), minlength=size)).astype(np.int64)


def _bucket_rows(
    plan: StatePlan, arrived: pl.DataFrame, masks: Mapping[EventFilter, np.ndarray], chain: Sequence[datetime]
) -> dict[datetime, pl.DataFrame]:
    """What arrived, counted per interval of the chain it happened in, user and bucketed selection.

    Nearly every arrived row happened in the newest interval (since the previous run): those are counted with
    arrays; the late ones (earlier intervals) with a group-by.
    """
    if len(chain) < 2 or arrived.is_empty() or not plan.selections:
        return {}
    runs = pl.Series(list(chain), dtype=pl.Datetime("us", "UTC"))
    interval = (runs.search_sorted(arrived.get_column("ts"), side="right").cast(pl.Int64) - 1).to_numpy()
    newest = len(chain) - 2
    ix = arrived.get_column("ix").to_numpy()
    out: dict[datetime, list[pl.DataFrame]] = {}
    late = []
    for sel, selection in enumerate(plan.selections):
        mask = masks[selection]
        counts = np.bincount(ix[mask & (interval == newest)], minlength=1)
        users = np.flatnonzero(counts)
        out.setdefault(chain[newest], []).append(
            pl.DataFrame(
                {"ix": users.astype(np.uint32), "sel": np.full(len(users), sel, np.uint16), "n": counts[users]},
                schema={"ix": pl.UInt32, "sel": pl.UInt16, "n": pl.UInt32},
            )
        )
        older = mask & (interval >= 0) & (interval < newest)
        if older.any():
            late.append(pl.DataFrame({"k": interval[older], "ix": ix[older], "sel": np.full(older.sum(), sel)}))
    if late:
        counted = (
            pl.concat(late)
            .group_by("k", "sel", "ix")
            .agg(pl.len().alias("n"))
            .sort("k", "sel", "ix")
            .cast({"ix": pl.UInt32, "sel": pl.UInt16, "n": pl.UInt32})
        )
        for (k,), part in counted.partition_by("k", as_dict=True, maintain_order=True).items():
            out.setdefault(chain[int(k)], []).append(part.drop("k"))
    return {start: pl.concat(parts) for start, parts in out.items()}


def _selections(plan: StatePlan) -> list[EventFilter]:
    return list(dict.fromkeys(f.events for f in plan.features))


def _filled(series: pl.Series, feature: EventStat) -> pl.Series:
    return series.fill_null(0) if feature.stat in ("count", "sum") else series


def _padded(plan: StatePlan, series: pl.Series, size: int) -> pl.Series:
    """A state column for a dictionary grown to `size`: new users had nothing, so 0 counts and sums, else null."""
    by = size - len(series)
    if not by:
        return series
    feature = next((f for f in plan.features if plan.column(f) == series.name), None)
    filler = 0 if feature is not None and feature.stat in ("count", "sum") else None
    return series.extend_constant(filler, by)


def _frame(plan: StatePlan, values: Mapping[str, pl.Series]) -> pl.DataFrame:
    names = [plan.column(f) for f in plan.features] + [plan.anchor_column(w) for w in plan.anchors]
    return pl.DataFrame([values[name].alias(name) for name in names])


def _attribute(window: Window) -> str:
    """The users' column a window starts from: its `after`, or `entered_at` for `since: entry`."""
    return window.after if window.after is not None else "entered_at"


def _window_key(window: Window | None) -> str:
    return "ever" if window is None else window.model_dump_json(by_alias=True, exclude_none=True)
