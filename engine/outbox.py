"""Turn planned sends into outbox rows: one per message per address, or one skip with its reason.

Each channel finds its own recipients (`Channel.plan`): an email goes to the user's address, a push to each of
the user's device tokens, a plugin's message wherever its plugin says. A message that cannot be sent (no
address, no consent) is still written, as `skipped` with the reason: the ledger accounts for every send a
journey planned.
"""

from datetime import datetime

import polars as pl

from engine.channels.registry import channel, channels

OUTBOX_COLUMNS = (
    "send_key", "run_id", "as_of", "journey", "journey_version", "node", "instance_id", "user_id",
    "channel", "template", "variant", "transactional", "recipient", "status", "reason",
)  # fmt: skip
PLANNING_COLUMNS = ("priority",)  # what delivery controls read besides the stored columns


def plan_outbox(sends: pl.DataFrame, users: pl.LazyFrame, *, run_id: str, as_of: datetime) -> pl.DataFrame:
    """Outbox rows for this run's sends, sorted by send key."""
    unknown = set(sends.get_column("channel").unique().drop_nulls()) - set(channels())
    if unknown:
        raise ValueError(f"sends name unregistered channel(s) {sorted(unknown)}: was a channel plugin not loaded?")
    planned = sends.lazy().with_columns(
        pl.lit(run_id).alias("run_id"),
        pl.lit(as_of).dt.cast_time_unit("us").alias("as_of"),
        pl.col("version").alias("journey_version"),
    )
    columns = [name for name in (*OUTBOX_COLUMNS, *PLANNING_COLUMNS) if name != "status"]
    rows = pl.concat(
        [
            spec.plan(planned.filter(pl.col("channel") == name), users).select(columns)
            for name, spec in channels().items()
        ]
    )
    return (
        rows.with_columns(
            pl.when(pl.col("reason").is_null()).then(pl.lit("planned")).otherwise(pl.lit("skipped")).alias("status")
        )
        .select(*OUTBOX_COLUMNS, *PLANNING_COLUMNS)
        .sort("send_key")
        .collect()
    )


def skip_suppressed(outbox: pl.DataFrame, name: str, suppressed: set[str], reason: str = "suppressed") -> pl.DataFrame:
    """Planned rows of channel `name` to a suppressed address become skips with `reason`: a bounce, an
    unsubscribe or a token FCM called UNREGISTERED is final. Addresses compare as the channel says (emails in
    any case, tokens exactly)."""
    spec = channel(name)
    if spec.fold_case:
        hit_address = pl.col("recipient").str.to_lowercase().is_in([address.lower() for address in suppressed])
    else:
        hit_address = pl.col("recipient").is_in(list(suppressed))
    hit = (pl.col("status") == "planned") & (pl.col("channel") == name) & hit_address
    return outbox.with_columns(
        pl.when(hit).then(pl.lit("skipped")).otherwise(pl.col("status")).alias("status"),
        pl.when(hit).then(pl.lit(reason)).otherwise(pl.col("reason")).alias("reason"),
    )
