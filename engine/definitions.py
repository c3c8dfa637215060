"""Load and check every definition before a run uses any of them.

Each file is validated on its own (errors name file, line and field), then the set as a whole: references
between segments resolve and do not loop, journeys enter on known segments, and every template a journey sends
exists, has a context builder, and renders with that builder's sample context (as its channel checks it). All
problems are gathered and raised together, so one pass fixes them all. The content hash of every file is the
version a run records.
"""

from dataclasses import dataclass, field
from pathlib import Path

from engine.channels.registry import channel as channel_named
from engine.channels.registry import load_channel_plugins
from engine.contexts import builder_for
from engine.definition_checks import RuleSite, entry_windows_outside_journeys, journey_rules, journey_segments
from engine.python_segments import PythonSegment, load_python_segment
from engine.render import MessageTemplateError, TemplateStore
from engine.rules import segment_refs
from engine.segments import SegmentCycleError, evaluation_order
from engine.yaml_source import DefinitionError, Problem, YamlDocument, load_yaml, validate_document
from models.delivery import DeliveryPolicy
from models.journeys import JourneyDefinition, SendNode
from models.segments import SegmentDefinition


@dataclass(frozen=True)
class Definitions:
    segments: dict[str, SegmentDefinition]
    journeys: dict[str, JourneyDefinition]
    versions: dict[str, str]  # "segments/x.yaml" or "templates/email/x" -> sha256
    python_segments: dict[str, PythonSegment] = field(default_factory=dict)
    rule_sites: list[RuleSite] = field(default_factory=list)  # every rule, with where it is written
    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)

    def segment_version(self, name: str) -> str:
        kind = "py" if name in self.python_segments else "yaml"
        return self.versions[f"segments/{name}.{kind}"]

    def journey_version(self, name: str) -> str:
        return self.versions[f"journeys/{name}.yaml"][:16]


def load_definitions(root: Path, templates: TemplateStore) -> Definitions:
    """Every definition under `root`, checked; the channel plugins of NUDGE_CHANNEL_PLUGINS are loaded first, so
    that a definition naming their channels validates and one naming an unknown channel does not."""
    load_channel_plugins()
    problems: list[Problem] = []
    versions: dict[str, str] = {}
    segments: dict[str, SegmentDefinition] = {}
    journeys: dict[str, JourneyDefinition] = {}
    sources: dict[str, YamlDocument] = {}
    broken: set[str] = set()  # names whose file failed: referring to them is not a second problem
    for kind, model, target in (("segments", SegmentDefinition, segments), ("journeys", JourneyDefinition, journeys)):
        for path in sorted((root / kind).glob("*.yaml")):
            shown = path.relative_to(root).as_posix()
            try:
                doc = load_yaml(path, root=root)
                definition = validate_document(doc, model, root=root)
            except DefinitionError as error:
                problems.extend(error.problems)
                broken.add(path.stem)
                continue
            versions[shown] = doc.sha256
            if definition.name != path.stem:
                problems.append(
                    Problem(shown, doc.line_of(("name",)), "name", f"must match the file name {path.stem!r}")
                )
            target[definition.name] = definition  # type: ignore[assignment]
            sources[f"{kind}/{definition.name}"] = doc
    delivery = DeliveryPolicy()
    if (policy := root / "delivery.yaml").exists():
        try:
            doc = load_yaml(policy, root=root)
            delivery = validate_document(doc, DeliveryPolicy, root=root)
            versions["delivery.yaml"] = doc.sha256
            problems.extend(_unknown_capped_journeys(delivery, doc, set(journeys) | broken))
        except DefinitionError as error:
            problems.extend(error.problems)
    python_segments: dict[str, PythonSegment] = {}
    for path in sorted((root / "segments").glob("*.py")):
        shown = path.relative_to(root).as_posix()
        try:
            python_segments[path.stem] = segment = load_python_segment(path, shown=shown)
        except DefinitionError as error:
            problems.extend(error.problems)
            broken.add(path.stem)
            continue
        versions[shown] = segment.version
        if path.stem in segments:
            problems.append(Problem(shown, 1, "", f"segment {path.stem!r} is also defined in YAML"))
    sites = _rule_sites(segments, journeys, sources)
    for site in sites:
        if site.file.startswith("segments/"):
            problems.extend(entry_windows_outside_journeys(site))
    known = set(segments) | broken
    problems.extend(_check_segments(segments, known, set(python_segments), sources))
    known |= set(python_segments)
    problems.extend(_check_journeys(journeys, known, sources, templates, versions))
    if problems:
        raise DefinitionError(problems)
    return Definitions(
        segments=segments,
        journeys=journeys,
        versions=dict(sorted(versions.items())),
        python_segments=python_segments,
        rule_sites=sites,
        delivery=delivery,
    )


def _rule_sites(
    segments: dict[str, SegmentDefinition], journeys: dict[str, JourneyDefinition], sources: dict[str, YamlDocument]
) -> list[RuleSite]:
    sites = [
        RuleSite(sources[f"segments/{name}"], f"segments/{name}.yaml", ("rule",), segment.rule)
        for name, segment in sorted(segments.items())
    ]
    for name, journey in sorted(journeys.items()):
        doc = sources[f"journeys/{name}"]
        sites += [RuleSite(doc, f"journeys/{name}.yaml", loc, rule) for loc, rule in journey_rules(journey)]
    return sites


def _check_segments(
    segments: dict[str, SegmentDefinition], known: set[str], python: set[str], sources: dict[str, YamlDocument]
) -> list[Problem]:
    problems = []
    for name, segment in segments.items():
        for ref in segment_refs(segment.rule):
            if ref in python:
                message = f"{ref!r} is a Python segment: YAML rules cannot reference Python segments yet"
                problems.append(_problem(sources[f"segments/{name}"], ("rule",), message))
            elif ref not in known:
                problems.append(_problem(sources[f"segments/{name}"], ("rule",), f"unknown segment {ref!r}"))
    if not problems and known == set(segments):
        try:
            evaluation_order(segments)
        except SegmentCycleError as error:
            problems.append(Problem("segments", 1, "rule", str(error)))
    return problems


def _check_journeys(
    journeys: dict[str, JourneyDefinition],
    known: set[str],
    sources: dict[str, YamlDocument],
    templates: TemplateStore,
    versions: dict[str, str],
) -> list[Problem]:
    problems = []
    broken_templates: set[str] = set()
    for name, journey in journeys.items():
        doc = sources[f"journeys/{name}"]
        for where, ref in journey_segments(journey):
            if ref not in known:
                problems.append(_problem(doc, where, f"unknown segment {ref!r}"))
        for node_id, node in journey.nodes.items():
            if isinstance(node, SendNode):
                for template in node.send.templates:
                    problem = _check_template(node.send.channel, template, templates, versions, broken_templates)
                    if problem:
                        problems.append(
                            _problem(doc, ("nodes", node_id, "send", *_template_field(node, template)), problem)
                        )
    return problems


def _template_field(node: SendNode, template: str) -> tuple[str | int, ...]:
    """Where a template is named in a send node: its `template`, or the first variant using it."""
    if node.send.variants is None:
        return ("template",)
    first = next(number for number, variant in enumerate(node.send.variants) if variant.template == template)
    return ("variants", first, "template")


def _check_template(
    channel: str, template: str, templates: TemplateStore, versions: dict[str, str], broken: set[str]
) -> str | None:
    """Compile and render a template with a sample context; the problem, or None after recording its version.

    A broken template is reported once, at the first send naming it.
    """
    shown = f"templates/{channel}/{template}"
    if shown in broken:
        return None
    try:
        version = channel_named(channel).check_template(templates, template, builder_for(template).sample)
    except (KeyError, MessageTemplateError) as error:
        broken.add(shown)
        return str(error).strip('"')
    versions[shown] = version
    return None


def _unknown_capped_journeys(delivery: DeliveryPolicy, doc: YamlDocument, known: set[str]) -> list[Problem]:
    """A cap on a journey that does not exist would silently cap nothing: most likely a typo."""
    return [
        _problem(doc, ("journey_caps", name), f"unknown journey {name!r}")
        for name in delivery.journey_caps
        if name not in known
    ]


def _problem(doc: YamlDocument, loc: tuple[str | int, ...], message: str) -> Problem:
    field = ".".join(str(part) for part in loc)
    return Problem(doc.path.parent.name + "/" + doc.path.name, doc.line_of(loc), field, message)
