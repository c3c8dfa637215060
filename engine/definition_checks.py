"""Check definitions against the data a run is about to use: names that do not occur, types that cannot match.

A definition can be well-formed and still wrong for the snapshot: a misspelt event matches nobody, a timestamp
attribute compared with a number fails deep inside Polars. Unknown names are warnings (an event may simply not
have happened yet; an attribute absent from this snapshot reads as missing for everyone), type mismatches are
errors that name file, line and field, raised before any segment is computed.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import polars as pl

from engine.yaml_source import DefinitionError, Problem, YamlDocument
from models.journeys import (
    AttributeDelay,
    BranchNode,
    BroadcastEntry,
    DelayNode,
    EventEntry,
    JourneyDefinition,
    SegmentEntry,
    WaitEvent,
    WaitForNode,
    WaitSegment,
)
from models.rules import (
    Aggregate,
    All,
    AnyOf,
    Attribute,
    AttributeSpec,
    EventCount,
    FirstPerformed,
    LastPerformed,
    Not,
    NotPerformed,
    Performed,
    Rule,
    SegmentRef,
    Window,
)

Loc = tuple[str | int, ...]
_NUMERIC_OPERATORS = ("lt", "lte", "gt", "gte", "between")
_TIME_OPERATORS = ("older_than", "newer_than", "before", "after")


@dataclass(frozen=True)
class RuleSite:
    """Where a rule sits: the definition file it came from and its location inside it."""

    doc: YamlDocument
    file: str
    loc: Loc
    rule: Rule


def located_leaves(rule: Rule, loc: Loc) -> Iterator[tuple[Loc, Rule]]:
    """Every leaf condition with its location in the YAML data (for line numbers)."""
    match rule:
        case All(all=items):
            for index, item in enumerate(items):
                yield from located_leaves(item, (*loc, "all", index))
        case AnyOf(any=items):
            for index, item in enumerate(items):
                yield from located_leaves(item, (*loc, "any", index))
        case Not(not_=inner):
            yield from located_leaves(inner, (*loc, "not"))
        case _:
            yield loc, rule


def journey_rules(journey: JourneyDefinition) -> list[tuple[Loc, Rule]]:
    """Every rule a journey evaluates, located; plus stand-in rules for the events and date attributes it reads
    outside rules (entry, wait-for, goal, delays until a date), so the snapshot checks cover those names too."""
    rules: list[tuple[Loc, Rule]] = []
    watched = [(("entry", "event"), journey.entry)] if isinstance(journey.entry, EventEntry) else []
    for node_id, node in journey.nodes.items():
        match node:
            case BranchNode():
                rules += [(("nodes", node_id, "branch", n, "when"), case.when) for n, case in enumerate(node.branch)]
            case WaitForNode(wait_for=WaitEvent() as wanted):
                watched.append((("nodes", node_id, "wait_for", "event"), wanted))
            case DelayNode(delay=AttributeDelay(until_attribute=name)):
                dated = Attribute(attribute=AttributeSpec(name=name, older_than=timedelta(minutes=1)))
                rules.append((("nodes", node_id, "delay", "until_attribute"), dated))
    rules += [(("exit_when", n, "when"), criterion.when) for n, criterion in enumerate(journey.exit_when)]
    if journey.goal is not None:
        watched.append((("goal", "event"), journey.goal))
    rules += [(loc, Performed(performed=EventCount(event=match.event))) for loc, match in watched]
    return rules


def journey_segments(journey: JourneyDefinition) -> list[tuple[Loc, str]]:
    """Every segment a journey names, located: entry, broadcast, wait-for, and in its rules."""
    named: list[tuple[Loc, str]] = []
    if isinstance(journey.entry, SegmentEntry):
        named.append((("entry", "segment"), journey.entry.segment))
    if isinstance(journey.entry, BroadcastEntry):
        named.append((("entry", "broadcast"), journey.entry.broadcast))
    for node_id, node in journey.nodes.items():
        if isinstance(node, WaitForNode) and isinstance(node.wait_for, WaitSegment):
            named.append((("nodes", node_id, "wait_for", "segment"), node.wait_for.segment))
    for site_loc, rule in journey_rules(journey):
        leaves = located_leaves(rule, site_loc)
        named += [((*loc, "segment"), leaf.segment) for loc, leaf in leaves if isinstance(leaf, SegmentRef)]
    return named


def entry_windows_outside_journeys(site: RuleSite) -> list[Problem]:
    """`since: entry` means the journey entry: in a segment there is none."""
    problems = []
    for loc, leaf in located_leaves(site.rule, site.loc):
        for field, window in _windows(leaf):
            if window.since == "entry":
                where = (*loc, *field, "within", "since")
                problems.append(_problem(site, where, "'since: entry' is only meaningful in a journey branch"))
    return problems


def check_against_snapshot(
    sites: list[RuleSite], *, users_schema: pl.Schema, events: set[str]
) -> tuple[list[str], set[str]]:
    """Warnings, and the attributes the rules read that the snapshot lacks; raises on type mismatches."""
    warnings: list[str] = []
    missing: set[str] = set()
    problems: list[Problem] = []
    for site in sites:
        for loc, leaf in located_leaves(site.rule, site.loc):
            for field, event in _events(leaf):
                if event not in events:
                    line = site.doc.line_of((*loc, *field))
                    warnings.append(f"{site.file}:{line}: event {event!r} does not occur in the snapshot")
            for field, name, expect in _attributes(leaf):
                if name not in users_schema:
                    line = site.doc.line_of((*loc, *field))
                    warnings.append(f"{site.file}:{line}: attribute {name!r} is not in the users snapshot")
                    missing.add(name)
                elif (mismatch := _mismatch(users_schema[name], expect)) is not None:
                    problems.append(_problem(site, (*loc, *field), f"attribute {name!r} {mismatch}"))
    if problems:
        raise DefinitionError(problems)
    return warnings, missing


def absent_attribute_columns(sites: list[RuleSite], users_schema: pl.Schema) -> list[pl.Expr]:
    """Null columns, typed as their conditions expect, for attributes the rules read but the snapshot lacks."""
    dtypes = {"number": pl.Float64, "time": pl.Datetime("us", "UTC"), "bool": pl.Boolean}
    columns: dict[str, pl.Expr] = {}
    for site in sites:
        for _, leaf in located_leaves(site.rule, site.loc):
            for _, name, expect in _attributes(leaf):
                if name not in users_schema:
                    columns.setdefault(name, pl.lit(None, dtypes.get(expect, pl.String)).alias(name))
    return list(columns.values())


def _events(leaf: Rule) -> Iterator[tuple[Loc, str]]:
    match leaf:
        case Performed(performed=spec) | NotPerformed(not_performed=spec) | Aggregate(aggregate=spec):
            yield (_kind(leaf), "event"), spec.event
        case FirstPerformed(first_performed=spec) | LastPerformed(last_performed=spec):
            yield (_kind(leaf), "event"), spec.event
    for field, window in _windows(leaf):
        if window.after_first:
            yield (*field, "within", "after_first"), window.after_first


def _attributes(leaf: Rule) -> Iterator[tuple[Loc, str, str]]:
    """(location, attribute name, what the condition needs of its type)."""
    if isinstance(leaf, Attribute):
        operator, operand = leaf.attribute.operator()
        yield ("attribute", "name"), leaf.attribute.name, _expectation(operator, operand)
    for field, window in _windows(leaf):
        if window.after:
            yield (*field, "within", "after"), window.after, "time"


def _expectation(operator: str, operand: object) -> str:
    if operator in _NUMERIC_OPERATORS:
        return "number"
    if operator in _TIME_OPERATORS:
        return "time"
    if operator == "matches":
        return "text"
    if operator == "contains":
        return "text or list"
    if operator in ("equals", "not_equals", "in_", "not_in"):
        values = operand if isinstance(operand, list) else [operand]
        if all(isinstance(value, bool) for value in values):
            return "bool"
        if all(isinstance(value, int | float) and not isinstance(value, bool) for value in values):
            return "number"
        if all(isinstance(value, str) for value in values):
            return "text"
    return "any"


def _mismatch(dtype: pl.DataType, expect: str) -> str | None:
    ok = {
        "number": dtype.is_numeric(),
        "time": dtype.is_temporal(),
        "text": dtype == pl.String or dtype == pl.Categorical,
        "text or list": dtype == pl.String or isinstance(dtype, pl.List),
        "bool": dtype == pl.Boolean,
        "any": True,
    }[expect]
    return None if ok else f"is {dtype} in the snapshot, but the condition needs a {expect}"


def _windows(leaf: Rule) -> Iterator[tuple[Loc, Window]]:
    spec = getattr(leaf, _kind(leaf), None)
    window = getattr(spec, "within", None)
    if isinstance(window, Window):
        yield (_kind(leaf),), window


def _kind(leaf: Rule) -> str:
    return next(iter(leaf.model_dump(by_alias=True, exclude_none=True)))


def _problem(site: RuleSite, loc: Loc, message: str) -> Problem:
    field = ".".join(str(part) for part in loc)
    return Problem(site.file, site.doc.line_of(loc), field, message)
