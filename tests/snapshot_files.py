"""Writing raw snapshot files for ingest tests: text as given, frames as Parquet."""

from pathlib import Path

import polars as pl


def write(root: Path, rel: str, content: str | pl.DataFrame) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, pl.DataFrame):
        content.write_parquet(path)
    else:
        path.write_text(content, encoding="utf-8")
    return path
