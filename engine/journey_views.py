"""What operators ask of journey state: who is where, how many moved per node per day, one user's path, and how
the holdout and each experiment arm convert."""

import polars as pl
from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection

from models.tables import JourneyInstance, JourneyTransition

_INSTANCES = JourneyInstance.__table__  # type: ignore[attr-defined]
_TRANSITIONS = JourneyTransition.__table__  # type: ignore[attr-defined]


def where_users_are(conn: Connection, journey: str) -> pl.DataFrame:
    """Instances by current node: active ones waiting there, exited ones with their reason."""
    rows = conn.execute(
        select(_INSTANCES.c.node, _INSTANCES.c.status, _INSTANCES.c.exit_reason, func.count())
        .where(_INSTANCES.c.journey == journey)
        .group_by(_INSTANCES.c.node, _INSTANCES.c.status, _INSTANCES.c.exit_reason)
        .order_by(_INSTANCES.c.status, _INSTANCES.c.node)
    ).all()
    schema = {"node": pl.String, "status": pl.String, "exit_reason": pl.String, "instances": pl.Int64}
    return pl.DataFrame([tuple(row) for row in rows], schema=schema, orient="row")


def arrivals_per_day(conn: Connection, journey: str) -> pl.DataFrame:
    """How many instances reached each node on each (UTC) day: the journey's daily funnel."""
    rows = conn.execute(
        select(_TRANSITIONS.c.at, _TRANSITIONS.c.to_node).where(_TRANSITIONS.c.journey == journey)
    ).all()
    frame = pl.DataFrame(
        [tuple(row) for row in rows], schema={"at": pl.Datetime("us", "UTC"), "node": pl.String}, orient="row"
    )
    return (
        frame.group_by(pl.col("at").dt.date().alias("day"), "node").agg(pl.len().alias("arrivals")).sort("day", "node")
    )


def conversions(conn: Connection, journey: str) -> pl.DataFrame:
    """Instances and goal conversions per group: the holdout against everyone else, and per split arm.

    Held-out instances walk the same path without messages, so their conversion rate is the baseline the
    others are compared with.
    """
    group = (_INSTANCES.c.holdout, _INSTANCES.c.arm)
    rows = conn.execute(
        select(
            *group,
            func.count(),
            func.sum(case((_INSTANCES.c.status == "active", 1), else_=0)),
            func.count(_INSTANCES.c.goal_at),
        )
        .where(_INSTANCES.c.journey == journey)
        .group_by(*group)
        .order_by(*group)
    ).all()
    schema = {"holdout": pl.Boolean, "arm": pl.String, "instances": pl.Int64, "active": pl.Int64, "goals": pl.Int64}
    frame = pl.DataFrame([tuple(row) for row in rows], schema=schema, orient="row")
    return frame.with_columns((pl.col("goals") / pl.col("instances")).round(4).alias("conversion"))


def user_path(conn: Connection, user_id: str, journey: str | None = None) -> pl.DataFrame:
    """Every step one user took, in order, with the run that took it and why (and the instance's entry key)."""
    query = select(
        _TRANSITIONS.c.journey,
        _TRANSITIONS.c.instance_id,
        _INSTANCES.c.entry_key,
        _TRANSITIONS.c.step,
        _TRANSITIONS.c.from_node,
        _TRANSITIONS.c.to_node,
        _TRANSITIONS.c.at,
        _TRANSITIONS.c.run_id,
        _TRANSITIONS.c.reason,
    ).select_from(
        _INSTANCES.join(
            _TRANSITIONS,
            (_TRANSITIONS.c.journey == _INSTANCES.c.journey) & (_TRANSITIONS.c.instance_id == _INSTANCES.c.instance_id),
        )
    )
    query = query.where(_INSTANCES.c.user_id == user_id)  # the user's instances, then each one's steps by key
    if journey is not None:
        query = query.where(_TRANSITIONS.c.journey == journey)
    rows = conn.execute(query.order_by(_TRANSITIONS.c.at, _TRANSITIONS.c.instance_id, _TRANSITIONS.c.step)).all()
    schema = {
        "journey": pl.String,
        "instance_id": pl.String,
        "entry_key": pl.String,
        "step": pl.Int64,
        "from_node": pl.String,
        "to_node": pl.String,
        "at": pl.Datetime("us", "UTC"),
        "run_id": pl.String,
        "reason": pl.String,
    }
    return pl.DataFrame([tuple(row) for row in rows], schema=schema, orient="row")
