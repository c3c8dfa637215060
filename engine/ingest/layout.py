"""Finding partitions and data files in a snapshot or store folder.

Names starting with `.` or `_` are ignored everywhere (`_SUCCESS` markers, `.DS_Store`, half-written temporary
files); anything else that does not fit the layout is an error, because a silently skipped file is lost data.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from engine.contract import SnapshotError, partition_date
from engine.ingest.formats import raw_format


def is_hidden(path: Path) -> bool:
    """Whether the layout ignores `path`."""
    return path.name.startswith((".", "_"))


def partitions(root: Path, *, base: Path) -> list[tuple[date, Path]]:
    """The `date=YYYY-MM-DD` folders directly under `root`, oldest first.

    Args:
        root: the folder holding the partitions.
        base: the snapshot root, for relative paths in error messages.
    """
    found: list[tuple[date, Path]] = []
    for entry in sorted(root.iterdir()):
        if is_hidden(entry):
            continue
        day = partition_date(entry.name) if entry.is_dir() else None
        if day is None:
            rel = entry.relative_to(base).as_posix()
            raise SnapshotError(f"{rel}: expected only date=YYYY-MM-DD partition folders in {root.name}/")
        found.append((day, entry))
    return found


def data_files(folder: Path, *, base: Path) -> list[Path]:
    """The raw data files directly in `folder`, sorted by name; unknown formats and subfolders are errors."""
    files: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if is_hidden(entry):
            continue
        rel = entry.relative_to(base).as_posix()
        if entry.is_dir():
            raise SnapshotError(f"{rel}: unexpected folder inside a partition")
        raw_format(entry, rel=rel)
        files.append(entry)
    return files
