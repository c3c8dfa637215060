"""Load YAML definitions and validate them with pydantic, reporting problems by file, line and field.

Segments, journeys and other definitions are written by people in YAML. When one is wrong, the author needs
``segments/cart.yaml:7: rule.all[1].performed.within: ...``, not a pydantic traceback over a nested dict.
To get there without a second parser, the text is composed once into PyYAML's node tree (which remembers
where every node starts) and the plain data is constructed from that same tree; the tree is kept to answer
"which line is this field on?".

Errors::

    DefinitionError            one or more Problem(file, line, field, message)
"""

from __future__ import annotations

import hashlib
import reprlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, SequenceNode

_MERGE_TAG = "tag:yaml.org,2002:merge"

Loc = tuple[str | int, ...]
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a definition, located precisely enough to jump to it in an editor."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class DefinitionError(Exception):
    """A definition that cannot be used; carries every problem found so authors fix them in one pass."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class YamlDocument:
    """A parsed definition file: its data, its exact bytes' hash (the version recorded per run), and lines."""

    path: Path
    text: str
    sha256: str
    data: Any
    _root: Node | None = field(repr=False, compare=False)
    _keys: dict[Node, Any] = field(repr=False, compare=False)

    def line_of(self, loc: Loc) -> int:
        """Return the 1-based line of ``loc`` (mapping keys and list indexes from the top of the document).

        A location that does not exist (say, a missing required field) resolves to the line of its nearest
        existing parent, which is where the author has to add it.
        """
        node = self._root
        if node is None:
            return 1
        line = node.start_mark.line + 1
        for part in loc:
            step = self._step(node, part)
            if step is None:
                break
            line, node = step
        return line

    def _step(self, node: Node, part: str | int) -> tuple[int, Node] | None:
        if isinstance(node, MappingNode):
            # After construction, merged (<<) entries come first and explicit keys after; the last one wins,
            # exactly as in the constructed dict.
            for key_node, value_node in reversed(node.value):
                if key_node in self._keys and self._keys[key_node] == part:
                    return key_node.start_mark.line + 1, value_node
        elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            item = node.value[part]
            return item.start_mark.line + 1, item
        return None


def load_yaml(path: Path, *, root: Path | None = None) -> YamlDocument:
    """Read and parse one YAML file with ``yaml.safe_load`` semantics, refusing duplicate mapping keys.

    PyYAML silently keeps the last of two equal keys; in a definition that hides a typo or a bad merge, so
    it is an error here. Syntax errors become a DefinitionError with their line. ``root``, when given, makes
    file names in problems relative to it.
    """
    shown = _display_name(path, root)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DefinitionError([Problem(shown, line, "", f"not valid UTF-8: {exc.reason}")]) from exc
    try:
        node, data, keys, duplicates = _parse(text)
    except yaml.YAMLError as exc:
        raise DefinitionError([_yaml_problem(shown, text, exc)]) from exc
    if duplicates:
        raise DefinitionError([Problem(shown, line, where, msg) for line, where, msg in duplicates])
    return YamlDocument(path, text, hashlib.sha256(raw).hexdigest(), data, node, keys)


def validate_document(doc: YamlDocument, model: type[ModelT], *, root: Path | None = None) -> ModelT:
    """Validate ``doc.data`` against ``model``, turning each pydantic error into a located Problem.

    pydantic's ``loc`` is a path through the model, not through the data: tagged unions add their tag names
    to it. Parts that are not steps in the data are skipped, so the reported field is one the author can
    find in the file.
    """
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        shown = _display_name(doc.path, root)
        problems = []
        for error in exc.errors(include_url=False):
            path = _data_path(doc.data, error)
            problems.append(Problem(shown, doc.line_of(path), _format_path(path), _message(error)))
        problems.sort(key=lambda p: p.line)
        raise DefinitionError(problems) from exc


def _display_name(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def _parse(text: str) -> tuple[Node | None, Any, dict[Node, Any], list[tuple[int, str, str]]]:
    """Compose the node tree, index its keys, then construct the data from that same tree."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        keys, duplicates = _index_keys(loader, node)
        data = loader.construct_document(node) if node is not None and not duplicates else None
        return node, data, keys, duplicates
    finally:
        loader.dispose()


def _index_keys(loader: yaml.SafeLoader, root: Node | None) -> tuple[dict[Node, Any], list[tuple[int, str, str]]]:
    """Construct every mapping key once, remembering it per key node and collecting duplicates.

    This runs on the composed tree before construction, while merge keys (``<<``) are still separate
    entries, so overriding a merged key stays legal and only two explicit equal keys are refused.
    """
    keys: dict[Node, Any] = {}
    duplicates: list[tuple[int, str, str]] = []
    seen: set[int] = set()
    stack: list[tuple[Node, Loc]] = [(root, ())] if root is not None else []
    while stack:
        node, loc = stack.pop()
        if id(node) in seen:  # aliases point at shared (possibly recursive) nodes
            continue
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend((item, (*loc, i)) for i, item in enumerate(node.value))
        elif isinstance(node, MappingNode):
            first_line: dict[Hashable, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    stack.append((value_node, loc))
                    continue
                key = keys[key_node] = loader.construct_object(key_node, deep=True)
                stack.append((value_node, (*loc, key)))
                if not isinstance(key, Hashable):
                    continue  # construction refuses unhashable keys, with their line
                line = key_node.start_mark.line + 1
                if key in first_line:
                    msg = f"duplicate key {key!r} (first defined on line {first_line[key]})"
                    duplicates.append((line, _format_path((*loc, key)), msg))
                else:
                    first_line[key] = line
    duplicates.sort()
    return keys, duplicates


def _yaml_problem(shown: str, text: str, exc: yaml.YAMLError) -> Problem:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        message = exc.problem or str(exc)
        if exc.context and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        return Problem(shown, exc.problem_mark.line + 1, "", message)
    if isinstance(exc, yaml.reader.ReaderError):
        return Problem(shown, text.count("\n", 0, exc.position) + 1, "", str(exc).splitlines()[0])
    return Problem(shown, 1, "", str(exc))


def _data_path(data: Any, error: ErrorDetails) -> Loc:
    """Follow ``error['loc']`` through ``data``, keeping only the parts that are steps in it.

    A missing field is not in the data by definition, yet it is what the author must add: it is kept.
    """
    loc = error["loc"]
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if _is_step(node, part):
            node = node[part]
            path.append(part)
        elif error["type"] == "missing" and i == len(loc) - 1:
            path.append(part)
    return tuple(path)


def _is_step(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _format_path(path: Loc) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlevel = 2
_short.maxdict = 4
_short.maxlist = 4


def _message(error: ErrorDetails) -> str:
    """pydantic's message, minus its internals, plus the offending value unless the message shows it."""
    ctx = error.get("ctx") or {}
    if error["type"] == "union_tag_invalid":
        # pydantic's text names the discriminator function, which means nothing to a definition's author.
        return f"unknown kind {ctx['tag']!r}, expected one of: {ctx['expected_tags']}"
    if error["type"] == "missing":
        return error["msg"]
    # A validator's ValueError arrives as "Value error, <text>": the text is the author-facing part.
    msg = str(ctx["error"]) if error["type"] == "value_error" and "error" in ctx else error["msg"]
    shown = _short.repr(error["input"])
    return msg if shown in msg else f"{msg} (got {shown})"
