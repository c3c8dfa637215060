"""Segments written in Python: the extension point for what the rule language cannot say.

A Python segment is a file `definitions/segments/<name>.py`, beside the YAML ones, that defines

    def segment(users: pl.LazyFrame, behaviour: Behaviour) -> pl.Expr | pl.LazyFrame

returning either a boolean expression over the users frame (its attribute columns) or a LazyFrame with a
`user_id` column. It sees the same exact behaviour a YAML segment sees (`behaviour.events` with ts < as_of,
`behaviour.rollups`), so it is deterministic for a given snapshot and as_of like everything else. Its version
is the file's content hash; it is loaded and dry-run on an empty population when definitions load, so a file
that does not import, lacks `segment`, or returns the wrong shape is refused before any run. Python segments
are evaluated before the YAML ones and may be used as journey entries; YAML rules cannot reference them yet.
"""

import hashlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from engine.behaviour import Behaviour
from engine.contract import EVENT_SCHEMA
from engine.rollups import ROLLUP_SCHEMA
from engine.yaml_source import DefinitionError, Problem

SegmentFunction = Callable[[pl.LazyFrame, Behaviour], pl.Expr | pl.LazyFrame]


@dataclass(frozen=True)
class PythonSegment:
    name: str
    description: str
    version: str
    function: SegmentFunction
    file: str
    line: int


def load_python_segment(path: Path, *, shown: str) -> PythonSegment:
    """Import one segment file and check its entry point; problems name the file and line."""
    source = path.read_bytes()
    spec = importlib.util.spec_from_file_location(f"nudge_segment_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise DefinitionError([Problem(shown, 1, "", "cannot be imported as a Python module")])
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise DefinitionError([Problem(shown, _line_of(error, path), "", f"import failed: {error!r}")]) from error
    function = getattr(module, "segment", None)
    if not callable(function) or list(inspect.signature(function).parameters) != ["users", "behaviour"]:
        raise DefinitionError([Problem(shown, 1, "segment", "define `def segment(users, behaviour)`")])
    return PythonSegment(
        name=path.stem,
        description=inspect.getdoc(module) or "",
        version=hashlib.sha256(source).hexdigest(),
        function=function,
        file=shown,
        line=inspect.getsourcelines(function)[1],
    )


def dry_run(segments: Mapping[str, PythonSegment], users_schema: pl.Schema) -> None:
    """Call every segment on an empty population with the snapshot's user columns, before any real use.

    The users' free attributes are known only from the snapshot, so this runs at the start of a run rather than
    when files load; a segment that fails here is refused before it computes anything.
    """
    problems = []
    for segment in segments.values():
        try:
            _members(segment.function, pl.LazyFrame(schema=users_schema), _empty_behaviour())
        except Exception as error:
            problems.append(Problem(segment.file, segment.line, "segment", f"fails on an empty population: {error!r}"))
    if problems:
        raise DefinitionError(problems)


def compute_python_memberships(
    segments: Mapping[str, PythonSegment], users: pl.LazyFrame, behaviour: Behaviour
) -> dict[str, pl.Series]:
    return {name: _members(segment.function, users, behaviour) for name, segment in sorted(segments.items())}


def _members(function: SegmentFunction, users: pl.LazyFrame, behaviour: Behaviour) -> pl.Series:
    """Known users only, sorted and unique, whichever shape the function returned."""
    result = function(users, behaviour)
    if isinstance(result, pl.Expr):
        selected = users.filter(result).select("user_id")
    elif isinstance(result, pl.LazyFrame):
        selected = result.select(pl.col("user_id").cast(pl.String)).join(users.select("user_id"), on="user_id")
    else:
        raise TypeError(f"segment() returned {type(result).__name__}: return a pl.Expr or a pl.LazyFrame")
    return selected.unique().collect().get_column("user_id").sort()


def _empty_behaviour() -> Behaviour:
    return Behaviour(
        as_of=datetime(2000, 1, 1, tzinfo=UTC),
        events=pl.LazyFrame(schema=EVENT_SCHEMA),
        rollups=pl.LazyFrame(schema=ROLLUP_SCHEMA),
    )


def _line_of(error: Exception, path: Path) -> int:
    if isinstance(error, SyntaxError) and error.lineno:
        return error.lineno
    frames = [frame for frame in inspect.trace() if Path(frame.filename) == path]
    return frames[-1].lineno if frames else 1
