"""What a run sees at `as_of`, built from hand-made events: the shared setup of engine-level tests."""

from datetime import datetime

import polars as pl

from engine.behaviour import Behaviour
from engine.rollups import rollup_events

Row = tuple[str, str, datetime, float | None]  # user_id, event, ts, value


def behaviour_from_rows(rows: list[Row], as_of: datetime) -> Behaviour:
    """Events that arrived the day they happened, seen as the engine sees them: raw before as_of, and rollups."""
    events = pl.DataFrame(
        rows,
        schema={"user_id": pl.String, "event": pl.String, "ts": pl.Datetime("us", "UTC"), "value": pl.Float64},
        orient="row",
    ).with_columns(pl.col("ts").dt.date().alias("load_date"), pl.lit(None, pl.String).alias("properties"))
    visible = events.lazy().filter(pl.col("ts") < as_of)
    return Behaviour(as_of=as_of, events=visible, rollups=rollup_events(visible).filter(pl.col("day") < as_of.date()))
