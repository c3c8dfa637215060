"""Reading a verified webhook body: a JSON array of SendGrid event objects, each kept whole as it came.

Only the fields every SendGrid event carries are required (`sg_event_id`, `event`, `email`, `timestamp`);
everything else is optional and kept in the raw object. SendGrid puts a message's custom_args at the top level
of each of its events, which is how `send_key` and `run_id` come back.
"""

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.feedback.errors import MalformedBatch

_LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z: beyond it a timestamp is no date at all


class WebhookEvent(BaseModel):
    """One event object; `raw` is its compact JSON with sorted keys, so a replay stores the same text."""

    model_config = ConfigDict(frozen=True)

    sg_event_id: str = Field(min_length=1)
    event: str = Field(min_length=1)
    email: str
    timestamp: int = Field(ge=0, le=_LAST_SECOND)
    send_key: str | None = None
    run_id: str | None = None
    category: str | list[str] | None = None
    url: str | None = None
    type: str | None = None
    reason: str | None = None
    raw: str

    @property
    def at(self) -> datetime:
        """When it happened, UTC."""
        return datetime.fromtimestamp(self.timestamp, UTC)

    @property
    def categories(self) -> list[str]:
        """The categories as a list: SendGrid sends one as a plain string and several as an array."""
        if self.category is None:
            return []
        return [self.category] if isinstance(self.category, str) else list(self.category)


def parse_batch(text: str) -> list[WebhookEvent]:
    """The events of a webhook body, or MalformedBatch naming the first problem.

    The whole batch is refused for one unreadable event, so that it is stored all or nothing and SendGrid's
    retry brings it back whole.
    """
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise MalformedBatch(f"body is not JSON: {exc}") from exc
    if not isinstance(payload, list):
        raise MalformedBatch(f"body is a JSON {type(payload).__name__}, expected an array of events")
    events = []
    for index, item in enumerate(payload):
        if not isinstance(item, dict):
            raise MalformedBatch(f"event {index} is a JSON {type(item).__name__}, expected an object")
        raw = json.dumps(item, sort_keys=True, separators=(",", ":"))
        try:
            events.append(WebhookEvent.model_validate({**_known(item), "raw": raw}))
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise MalformedBatch(f"event {index}: {where}: {problem['msg']}") from exc
    return events


def _known(item: dict[str, Any]) -> dict[str, Any]:
    return {name: item[name] for name in WebhookEvent.model_fields if name in item and name != "raw"}
