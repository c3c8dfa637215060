"""The schema of a journey definition file (`definitions/journeys/*.yaml`).

A journey is a graph of named nodes. Each node is a mapping whose type key (`delay`, `branch`, `send`, `exit`)
says what it does; all but exits name the node that follows. Graph checks (targets exist, every node reachable,
no loop that could spin within one run) run here, so a broken journey is refused before any run uses it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from models.durations import Duration
from models.rules import Rule
from models.segments import SLUG

NODE_KINDS = ("delay", "branch", "send", "exit")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Entry(_Strict):
    """Users enter when they enter `segment` (were not in it at the previous run, are in it now)."""

    segment: str = Field(pattern=SLUG)
    reentry: Literal["never", "after_exit"] = "after_exit"


class DelayNode(_Strict):
    delay: Duration
    next: str


class BranchCase(_Strict):
    when: Rule
    next: str


class BranchNode(_Strict):
    """The first case whose rule holds at the run's as_of wins; `otherwise` takes the rest."""

    branch: list[BranchCase] = Field(min_length=1)
    otherwise: str


class SendSpec(_Strict):
    """`transactional` marks a message the user asked for (a receipt, a reset link): delivery controls meant
    for marketing (frequency caps, quiet hours) do not hold it back."""

    channel: Literal["email", "push"]
    template: str = Field(pattern=SLUG)
    transactional: bool = False


class SendNode(_Strict):
    send: SendSpec
    next: str


class ExitNode(_Strict):
    exit: str = Field(pattern=SLUG, description="the reason recorded on the instance, e.g. converted")


def _node_kind(value: Any) -> str | None:
    keys = value.keys() if isinstance(value, dict) else type(value).model_fields.keys()
    return next((kind for kind in NODE_KINDS if kind in keys), None)


Node = Annotated[
    Annotated[DelayNode, Tag("delay")]
    | Annotated[BranchNode, Tag("branch")]
    | Annotated[SendNode, Tag("send")]
    | Annotated[ExitNode, Tag("exit")],
    Discriminator(
        _node_kind,
        custom_error_type="node_kind",
        custom_error_message=f"a node needs one of the keys: {', '.join(NODE_KINDS)}",
    ),
]


def successors(node: DelayNode | BranchNode | SendNode | ExitNode) -> list[str]:
    """The node ids a node can lead to, in the order its definition gives them."""
    match node:
        case BranchNode():
            return [case.next for case in node.branch] + [node.otherwise]
        case ExitNode():
            return []
        case _:
            return [node.next]


class JourneyDefinition(_Strict):
    """A journey: entry, a start node and the node graph."""

    name: str = Field(pattern=SLUG)
    description: str = ""
    status: Literal["draft", "active", "paused", "archived"] = "active"
    priority: int = Field(
        default=0, description="when journeys want the same user and channel in one run, the highest wins"
    )
    entry: Entry
    start: str
    nodes: dict[str, Node] = Field(min_length=1)

    @model_validator(mode="after")
    def _graph(self) -> JourneyDefinition:
        for node_id in self.nodes:
            if not node_id.replace("_", "a").isalnum() or not node_id[0].isalpha():
                raise ValueError(f"node id {node_id!r} must be letters, digits and underscores")
        targets = {"start": [self.start]} | {node_id: successors(node) for node_id, node in self.nodes.items()}
        for source, nexts in targets.items():
            for target in nexts:
                if target not in self.nodes:
                    raise ValueError(f"node {source!r} leads to {target!r}, which is not a node of this journey")
        unreachable = set(self.nodes) - _reachable(self.start, targets)
        if unreachable:
            raise ValueError(f"nodes never reached from start: {', '.join(sorted(unreachable))}")
        if loop := _instant_loop(self):
            raise ValueError(f"nodes {' -> '.join(loop)} form a loop with no delay in it")
        return self


def _reachable(start: str, targets: dict[str, list[str]]) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        node_id = stack.pop()
        if node_id not in seen:
            seen.add(node_id)
            stack.extend(targets.get(node_id, []))
    return seen


def _instant_loop(journey: JourneyDefinition) -> list[str] | None:
    """A cycle through nodes that take no time would never settle within a run: find one if it exists."""
    instant = {node_id: successors(node) for node_id, node in journey.nodes.items() if not isinstance(node, DelayNode)}

    def visit(node_id: str, path: list[str]) -> list[str] | None:
        if node_id in path:
            return [*path[path.index(node_id) :], node_id]
        for target in instant.get(node_id, []):
            if target in instant and (loop := visit(target, [*path, node_id])):
                return loop
        return None

    return next((loop for node_id in instant if (loop := visit(node_id, []))), None)
