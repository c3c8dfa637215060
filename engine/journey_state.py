"""The frames journey runs read and write: instances, transitions, planned sends, and what re-entry looks at.

An instance is one pass of one user (and, for keyed event entries, one key) through a journey. `version` is the
definition version it entered on; `node` where it is; `due_at` when the wait it is in ends (a delay's end, a
wait-for's deadline); `holdout` whether it is sent nothing; `arm` the last split arm it took; `goal_at` the time
of the conversion event that ended it.
"""

from dataclasses import dataclass

import polars as pl

MOMENT = pl.Datetime("us", "UTC")
EXIT = "(exit)"
"""The node an instance is moved to when it leaves without an exit node: goal, exit criteria, removed node."""

INSTANCE_SCHEMA = pl.Schema(
    {
        "instance_id": pl.String,
        "journey": pl.String,
        "version": pl.String,
        "user_id": pl.String,
        "entry_key": pl.String,
        "entered_at": MOMENT,
        "node": pl.String,
        "node_entered_at": MOMENT,
        "due_at": MOMENT,
        "status": pl.String,
        "exit_reason": pl.String,
        "steps": pl.Int64,
        "holdout": pl.Boolean,
        "arm": pl.String,
        "goal_at": MOMENT,
    }
)
TRANSITION_SCHEMA = pl.Schema(
    {
        "instance_id": pl.String,
        "step": pl.Int64,
        "journey": pl.String,
        "version": pl.String,  # the definition version that took the step
        "user_id": pl.String,
        "from_node": pl.String,
        "to_node": pl.String,
        "at": MOMENT,
        "reason": pl.String,
    }
)
SEND_SCHEMA = pl.Schema(
    {
        "send_key": pl.String,
        "instance_id": pl.String,
        "journey": pl.String,
        "version": pl.String,
        "user_id": pl.String,
        "node": pl.String,
        "channel": pl.String,
        "template": pl.String,
        "variant": pl.String,  # null unless the send node has variants
        "transactional": pl.Boolean,
        "priority": pl.Int64,
    }
)
KNOWN_SCHEMA = pl.Schema(
    {
        "instance_id": pl.String,
        "user_id": pl.String,
        "entry_key": pl.String,
        "status": pl.String,
        "entered_at": MOMENT,
        "node_entered_at": MOMENT,  # for an exited instance: when it left
    }
)
"""Every instance of a journey, in every status and version: what re-entry and rerun detection look at."""


@dataclass(frozen=True)
class Advance:
    instances: pl.DataFrame  # every instance this run created or moved, in its new state
    transitions: pl.DataFrame
    sends: pl.DataFrame


def concat_or_empty(frames: list[pl.DataFrame], schema: pl.Schema) -> pl.DataFrame:
    return pl.concat([frame.select(schema.names()) for frame in frames]) if frames else pl.DataFrame(schema=schema)


def moment(value: object) -> pl.Expr:
    """A literal instant in the frames' time unit."""
    return pl.lit(value).cast(MOMENT)


def transitions(moved: pl.DataFrame, *, at: object, version: str | None) -> pl.DataFrame:
    """Transition rows for instances about to move: `node` and `steps` are still the old ones, `next` and
    `reason` say where to and why."""
    return moved.select(
        "instance_id",
        (pl.col("steps") + 1).alias("step"),
        "journey",
        (pl.col("version") if version is None else pl.lit(version)).alias("version"),
        "user_id",
        pl.col("node").alias("from_node"),
        pl.col("next").alias("to_node"),
        moment(at).alias("at"),
        "reason",
    )
