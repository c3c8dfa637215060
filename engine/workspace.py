"""A replay's shadow workspace: its own engine home under `NUDGE_HOME/replays/<name>/`, and when it can be reused.

The shadow is an engine home like the live one (a SQLite database, a normalized store with rollups and segment
memberships) that reads the live snapshot's raw files and nothing else of the live home. It ingests the snapshot
into its own store rather than reading the live store, so that what it computes depends only on the snapshot,
the definitions and the as_of sequence, and a live run ingesting at the same moment cannot change it.

A workspace holds the as_ofs it has computed, in order, each with the fingerprint of the inputs it saw (every raw
events file arrived by that day and every users file dated by it) and one hash of all definitions and templates.
A later replay reuses it when its own sequence begins with those same as_ofs over the same inputs and
definitions, and continues from there; anything else (another history, a corrected file, an edited definition)
empties the workspace and starts over, since journey state cannot be rewound. Engine code changes are not
fingerprinted: replay with `fresh` after upgrading.
"""

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from sqlmodel import SQLModel

from engine.contract import EVENTS_DIR, USERS_DIR, partition_date
from engine.db import connect
from engine.ingest.layout import is_hidden
from engine.ingest.manifest import FileDigest, file_digest, fingerprint
from engine.settings import EngineSettings

STATE_FILE = "workspace.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class WorkspaceNameError(ValueError):
    """A workspace name must be usable as a folder and as a Prefect artifact key."""


@dataclass(frozen=True)
class Workspace:
    """Where a replay keeps its state and writes its outputs."""

    name: str
    root: Path
    settings: EngineSettings  # the shadow's settings: home is `root`, the snapshot is the live one

    @property
    def days_dir(self) -> Path:
        """Per-as_of outputs: `days/<as_of>/segments.parquet`, ..."""
        return self.root / "days"


@dataclass(frozen=True)
class ComputedDay:
    as_of: datetime
    inputs: str  # fingerprint of the snapshot files the day could see


@dataclass(frozen=True)
class WorkspaceState:
    definitions: str
    days: tuple[ComputedDay, ...]


def open_workspace(live: EngineSettings, name: str) -> Workspace:
    """The workspace `name` of the live home (created on first use); its settings never point into live state."""
    if not _NAME.match(name):
        raise WorkspaceNameError(f"workspace name {name!r}: use 1-63 lower-case letters, digits and dashes")
    root = (live.replays_dir / name).resolve()
    root.mkdir(parents=True, exist_ok=True)
    shadow = live.model_copy(update={"home": root, "snapshot_dir": live.snapshot.resolve(), "database_url": None})
    return Workspace(name=name, root=root, settings=shadow)


def definitions_hash(versions: dict[str, str]) -> str:
    """One hash over every definition's and template's content hash."""
    return hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()


def input_fingerprints(snapshot: Path, days: Iterable[date]) -> dict[date, str]:
    """For each day, a fingerprint of the raw files a run on that day can read.

    Events files count when their arrival partition is on or before the day; users files when their partition
    is (or when they sit in no partition). Each file is hashed once, however many days are asked for.
    """
    files = _snapshot_files(snapshot)
    return {
        day: fingerprint((rel, digest) for rel, arrived, digest in files if arrived is None or arrived <= day)
        for day in days
    }


def load_state(workspace: Workspace) -> WorkspaceState | None:
    path = workspace.root / STATE_FILE
    if not path.exists():
        return None
    body = json.loads(path.read_text(encoding="utf-8"))
    days = tuple(ComputedDay(datetime.fromisoformat(d["as_of"]), d["inputs"]) for d in body["days"])
    return WorkspaceState(definitions=body["definitions"], days=days)


def reusable_days(state: WorkspaceState | None, definitions: str, sequence: Sequence[ComputedDay]) -> int:
    """How many as_ofs of `sequence` the workspace already holds, as this replay would compute them.

    Either the workspace's days are a prefix of the sequence (continue after them) or the sequence is a prefix
    of its days (everything is there); otherwise 0, and the workspace must be emptied.
    """
    if state is None or state.definitions != definitions:
        return 0
    common = min(len(state.days), len(sequence))
    if tuple(state.days[:common]) != tuple(sequence[:common]):
        return 0
    return common


def reset(workspace: Workspace, definitions: str) -> None:
    """Empty the workspace: its store and outputs are deleted and its database's tables recreated empty.

    The database file is emptied rather than deleted because `engine.db.connect` keeps one engine per URL for
    the life of the process, and an engine on a deleted SQLite file would go on writing into nothing.
    """
    for folder in (workspace.settings.store_dir, workspace.days_dir):
        shutil.rmtree(folder, ignore_errors=True)
    database = connect(workspace.settings.database)
    SQLModel.metadata.drop_all(database)
    SQLModel.metadata.create_all(database)
    save_state(workspace, WorkspaceState(definitions=definitions, days=()))


def add_computed(workspace: Workspace, day: ComputedDay) -> None:
    """Record one more as_of as computed; called after the day's state is fully written."""
    state = load_state(workspace)
    if state is None:
        raise FileNotFoundError(f"{workspace.root / STATE_FILE}: workspace not prepared")
    save_state(workspace, WorkspaceState(state.definitions, (*state.days, day)))


def save_state(workspace: Workspace, state: WorkspaceState) -> None:
    body = {
        "format": 1,
        "definitions": state.definitions,
        "days": [{"as_of": d.as_of.astimezone(UTC).isoformat(), "inputs": d.inputs} for d in state.days],
    }
    tmp = workspace.root / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, workspace.root / STATE_FILE)


def _snapshot_files(snapshot: Path) -> list[tuple[str, date | None, FileDigest]]:
    found = []
    for sub in (EVENTS_DIR, USERS_DIR):
        root = snapshot / sub
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(snapshot)
            if path.is_dir() or any(is_hidden(Path(part)) for part in rel.parts):
                continue  # ignored by ingestion too
            found.append((rel.as_posix(), partition_date(path.parent.name), file_digest(path)))
    return found
