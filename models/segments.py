"""The schema of a segment definition file (`definitions/segments/*.yaml`)."""

from pydantic import BaseModel, ConfigDict, Field

from models.rules import Rule

SLUG = r"^[a-z][a-z0-9_]*$"


class SegmentDefinition(BaseModel):
    """A named rule over users' attributes and behaviour, recomputed for the whole population each run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=SLUG)
    description: str = ""
    rule: Rule
