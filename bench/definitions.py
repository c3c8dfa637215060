"""The benchmark's segments: one YAML rule in `bench/segments/` and its hand-written SQL twin in `bench/sql/`.

Adding a segment is adding both files with the same stem; a YAML without its SQL (or the reverse) is refused,
because a segment measured on one side only would make the engine/DuckDB ratio compare different work.
"""

from __future__ import annotations

from pathlib import Path

from bench.workload import BENCH_DIR
from engine.segments import evaluation_order
from engine.yaml_source import DefinitionError, Problem, load_yaml, validate_document
from models.segments import SegmentDefinition

SEGMENTS_DIR = BENCH_DIR / "segments"
SQL_DIR = BENCH_DIR / "sql"


def load_segments(folder: Path = SEGMENTS_DIR) -> dict[str, SegmentDefinition]:
    """Every segment YAML, validated by the engine's own loader so errors name file, line and field."""
    segments: dict[str, SegmentDefinition] = {}
    for path in sorted(folder.glob("*.yaml")):
        definition = validate_document(load_yaml(path, root=BENCH_DIR), SegmentDefinition, root=BENCH_DIR)
        if definition.name != path.stem:
            shown = path.relative_to(BENCH_DIR).as_posix()
            raise DefinitionError([Problem(shown, 1, "name", f"must match the file name {path.stem!r}")])
        segments[definition.name] = definition
    return segments


def load_sql(names: list[str], folder: Path = SQL_DIR) -> dict[str, str]:
    """The SQL of each segment, refusing a segment without SQL or SQL without a segment."""
    found = {path.stem: path for path in sorted(folder.glob("*.sql"))}
    missing = sorted(set(names) - set(found))
    orphans = sorted(set(found) - set(names))
    if missing or orphans:
        raise ValueError(f"segments without SQL: {missing or 'none'}; SQL without a segment: {orphans or 'none'}")
    return {name: found[name].read_text(encoding="utf-8") for name in names}


def ordered_names(segments: dict[str, SegmentDefinition]) -> list[str]:
    """Names with referenced segments first: the SQL side materializes them in this order."""
    return evaluation_order(segments)
