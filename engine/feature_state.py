"""Per-user features kept between runs, so that a daily run folds in what changed instead of all history.

A state is what the segment features were at one as_of, for every user who had any data or attribute then:

    feature_state/
      state/meta.json            as_of, the feature set's key, the arrivals seen, the chain of runs
      state/users.arrow          the user dictionary (row i is user i, append-only) and one column per feature
      buckets/start=<stamp>/run=<stamp>.parquet
                                 per user and selection, how many events of [start, next run) each run saw arrive

Buckets are what lets a sliding window (`last: 30d`) drop the day leaving it without reading that day's raw
events again: each run records the events that became visible, grouped by the interval between two runs they
happened in, and a later run subtracts the interval that left its windows. A bucket is complete only for
intervals after the chain's first run (events from before it were never recorded), so the first days after a
full recompute read the leaving intervals raw; `engine.feature_advance` decides.

A state is written to a temporary folder and renamed, so a reader sees a whole state or the previous one; bucket
files from a run that never saved its state are ignored, because a state names the runs of its chain.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

BUCKET_SCHEMA = pl.Schema({"ix": pl.UInt32, "sel": pl.UInt16, "n": pl.UInt32})


@dataclass(frozen=True)
class FeatureState:
    """Per-user feature values at `as_of` and what they were computed from.

    `users` is the dictionary (append-only: a user keeps their row from one run to the next) and `values` has
    one column per stored feature (`f0`, `f1`, ... in the order of the plan whose `key` it carries) and one per
    per-subject window start (`a0`, `a1`, ...), row i for `users[i]`.
    """

    as_of: datetime
    key: str
    arrivals: dict[str, str]  # load date (ISO) -> fingerprint of that arrival partition, for dates <= as_of's
    chain: tuple[datetime, ...]  # the runs since the last full recompute, oldest first; the last is as_of
    users: pl.Series
    values: pl.DataFrame


class FeatureStateStore:
    """The one current state of a store, and the buckets of its chain."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def _state_dir(self) -> Path:
        return self.root / "state"

    def load(self) -> FeatureState | None:
        meta_path = self._state_dir / "meta.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        frame = pl.read_ipc(self._state_dir / "users.arrow")
        return FeatureState(
            as_of=datetime.fromisoformat(meta["as_of"]),
            key=meta["key"],
            arrivals=meta["arrivals"],
            chain=tuple(datetime.fromisoformat(run) for run in meta["chain"]),
            users=frame.get_column("user_id"),
            values=frame.drop("user_id"),
        )

    def save(self, state: FeatureState) -> None:
        """Replace the current state with this one, atomically."""
        tmp = self.root / ".state.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state.users.alias("user_id").to_frame().hstack(state.values).write_ipc(tmp / "users.arrow")
        meta = {
            "as_of": state.as_of.isoformat(),
            "key": state.key,
            "arrivals": dict(sorted(state.arrivals.items())),
            "chain": [run.isoformat() for run in state.chain],
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        old = self.root / ".state.old"
        shutil.rmtree(old, ignore_errors=True)
        if self._state_dir.exists():
            self._state_dir.rename(old)
        tmp.rename(self._state_dir)
        shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        """Forget the state and every bucket: the next run recomputes in full and starts a new chain."""
        shutil.rmtree(self.root, ignore_errors=True)

    def write_buckets(self, run: datetime, rows: Mapping[datetime, pl.DataFrame]) -> None:
        """What arrived by `run`, per interval start: `ix, sel, n` frames."""
        for start, frame in rows.items():
            folder = self.root / "buckets" / f"start={_stamp(start)}"
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".run={_stamp(run)}.tmp"
            frame.select(BUCKET_SCHEMA.names()).cast(dict(BUCKET_SCHEMA)).write_parquet(tmp, compression="lz4")
            tmp.rename(folder / f"run={_stamp(run)}.parquet")

    def read_buckets(self, starts: Iterable[datetime], chain: Iterable[datetime]) -> pl.DataFrame:
        """Every row recorded for these interval starts by the runs of `chain`."""
        runs = {f"run={_stamp(run)}.parquet" for run in chain}
        files = [
            path
            for start in starts
            for path in sorted((self.root / "buckets" / f"start={_stamp(start)}").glob("run=*.parquet"))
            if path.name in runs
        ]
        return pl.read_parquet(files) if files else pl.DataFrame(schema=BUCKET_SCHEMA)

    def prune_buckets(self, *, before: datetime, chain: Iterable[datetime]) -> None:
        """Drop intervals starting before `before` (no window will leave them again) and files of other runs."""
        runs = {f"run={_stamp(run)}.parquet" for run in chain}
        root = self.root / "buckets"
        for folder in sorted(root.glob("start=*")) if root.exists() else []:
            if folder.name.removeprefix("start=") < _stamp(before):
                shutil.rmtree(folder)
                continue
            for path in folder.glob("*.parquet"):
                if path.name not in runs:
                    path.unlink()


def _stamp(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
