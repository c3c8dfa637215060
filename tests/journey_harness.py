"""Run a journey run after run on hand-made events, keeping state the way the database would.

Shared by the journey tests: events carry JSON properties (entry keys, property filters), users carry the
attributes delays read, and every run's transitions and sends are kept for assertions.
"""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import yaml

from engine.behaviour import Behaviour
from engine.journeys import INSTANCE_SCHEMA, KNOWN_SCHEMA, TRANSITION_SCHEMA, Advance, run_journey
from engine.rollups import rollup_events
from models.journeys import JourneyDefinition

T0 = datetime(2026, 9, 10, 6, tzinfo=UTC)
Event = tuple[str, str, datetime] | tuple[str, str, datetime, dict]  # user, event, ts[, properties]


def journey(text: str) -> JourneyDefinition:
    return JourneyDefinition.model_validate(yaml.safe_load(text))


def behaviour(events: list[Event], as_of: datetime) -> Behaviour:
    """What a run at `as_of` sees of `events` (those before it), with their properties as JSON text."""
    rows = [
        (user, name, ts, None, json.dumps(rest[0]) if rest else None)
        for user, name, ts, *rest in events  # type: ignore[misc]
    ]
    frame = pl.DataFrame(
        rows,
        schema={
            "user_id": pl.String,
            "event": pl.String,
            "ts": pl.Datetime("us", "UTC"),
            "value": pl.Float64,
            "properties": pl.String,
        },
        orient="row",
    ).with_columns(pl.col("ts").dt.date().alias("load_date"))
    visible = frame.lazy().filter(pl.col("ts") < as_of)
    return Behaviour(as_of=as_of, events=visible, rollups=rollup_events(visible).filter(pl.col("day") < as_of.date()))


@dataclass
class Runner:
    """A journey's state across runs, as `journey_store` would keep it."""

    definition: JourneyDefinition
    users: pl.LazyFrame = field(default_factory=lambda: pl.LazyFrame({"user_id": ["a", "b", "c"]}))
    version: str = "v1"
    state: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=INSTANCE_SCHEMA))
    transitions: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=TRANSITION_SCHEMA))
    sends: list[tuple[str, str, str, datetime]] = field(default_factory=list)  # user, channel, template, as_of

    def run(
        self,
        as_of: datetime,
        *,
        entered: list[str] = (),  # type: ignore[assignment]
        events: list[Event] = (),  # type: ignore[assignment]
        memberships: dict[str, list[str]] | None = None,
    ) -> tuple[pl.DataFrame, Advance]:
        new, result = run_journey(
            self.definition,
            self.version,
            entered=pl.Series(list(entered), dtype=pl.String),
            known=self.state.select(KNOWN_SCHEMA.names()),
            active=self.state.filter(pl.col("status") == "active"),
            users=self.users,
            behaviour=behaviour(list(events), as_of),
            memberships={name: pl.Series(members, dtype=pl.String) for name, members in (memberships or {}).items()},
        )
        self.state = pl.concat(
            [self.state.join(result.instances.select("instance_id"), on="instance_id", how="anti"), result.instances]
        ).sort("entered_at", "instance_id")
        self.transitions = pl.concat([self.transitions, result.transitions])
        self.sends += [(*row, as_of) for row in result.sends.select("user_id", "channel", "template").iter_rows()]
        return new, result

    def latest(self, user: str) -> dict:
        """The user's most recent instance, as a row."""
        return self.state.filter(pl.col("user_id") == user).sort("entered_at", "instance_id").row(-1, named=True)

    def where(self, user: str) -> tuple[str, str]:
        row = self.latest(user)
        return row["node"], row["status"]

    def reasons(self, user: str) -> list[str]:
        return self.transitions.filter(pl.col("user_id") == user).sort("at", "step").get_column("reason").to_list()
