"""What the store has already normalized, so a rerun skips unchanged raw files and redoes changed ones.

Keyed by the raw file's path relative to the snapshot, with its size and sha256. Hashing every file on every
run costs about a second per GB and is what makes a corrected file (late data, a producer's re-export) visible
even when its size and timestamps did not change.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileDigest:
    """Identity of a raw file's bytes."""

    size: int
    sha256: str


def file_digest(path: Path) -> FileDigest:
    """Size and sha256 of a file, read in chunks so large files cost no memory."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
    return FileDigest(size=path.stat().st_size, sha256=hasher.hexdigest())


def fingerprint(digests: Iterable[tuple[str, FileDigest]]) -> str:
    """One sha256 naming a set of raw files: over the sorted (relative path, sha256) pairs."""
    hasher = hashlib.sha256()
    for rel, digest in sorted(digests, key=lambda item: item[0]):
        hasher.update(f"{rel}\t{digest.sha256}\n".encode())
    return hasher.hexdigest()


def load_manifest(store_dir: Path) -> dict[str, FileDigest]:
    """The digests recorded by earlier runs; empty for a new store."""
    path = store_dir / MANIFEST_NAME
    if not path.exists():
        return {}
    entries = json.loads(path.read_text(encoding="utf-8"))["files"]
    return {rel: FileDigest(size=entry["size"], sha256=entry["sha256"]) for rel, entry in entries.items()}


def save_manifest(store_dir: Path, entries: dict[str, FileDigest]) -> None:
    """Write the manifest atomically, so a crash leaves the old or the new one and never half of either."""
    store_dir.mkdir(parents=True, exist_ok=True)
    body = {
        "format": 1,
        "files": {rel: {"size": d.size, "sha256": d.sha256} for rel, d in sorted(entries.items())},
    }
    tmp = store_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, store_dir / MANIFEST_NAME)
