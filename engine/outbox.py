"""Turn planned sends into outbox rows: one per message per address, or one skip with its reason.

A push goes to each of the user's device tokens, each its own row with its own key, so that an unregistered
token or a retry concerns one device and never re-sends to the others. A message that cannot be sent (no
address, no consent) is still written, as `skipped` with the reason: the ledger accounts for every send a
journey planned.
"""

from datetime import datetime

import polars as pl

from engine.keys import key_expr

OUTBOX_COLUMNS = (
    "send_key", "run_id", "as_of", "journey", "journey_version", "node", "instance_id", "user_id",
    "channel", "template", "variant", "transactional", "recipient", "status", "reason",
)  # fmt: skip
PLANNING_COLUMNS = ("priority",)  # what delivery controls read besides the stored columns


def plan_outbox(sends: pl.DataFrame, users: pl.LazyFrame, *, run_id: str, as_of: datetime) -> pl.DataFrame:
    """Outbox rows for this run's sends, sorted by send key."""
    contacts = users.select("user_id", "email", "email_consent", "push_tokens", "push_consent")
    planned = (
        sends.lazy()
        .join(contacts, on="user_id", how="left")
        .with_columns(
            pl.lit(run_id).alias("run_id"),
            pl.lit(as_of).dt.cast_time_unit("us").alias("as_of"),
            pl.col("version").alias("journey_version"),
        )
    )
    emails = planned.filter(pl.col("channel") == "email").with_columns(
        pl.col("email").alias("recipient"),
        _skip_reason(
            has_address=pl.col("email").fill_null("").str.strip_chars() != "",
            consent=pl.col("email_consent"),
            missing="no_email",
        ),
    )
    pushes = (
        planned.filter(pl.col("channel") == "push")
        .with_columns(pl.col("push_tokens").list.unique(maintain_order=True).alias("push_tokens"))
        .with_columns(pl.col("push_tokens").fill_null([]).list.len().alias("_tokens"))
        .explode("push_tokens", empty_as_null=True)
        .with_columns(
            pl.col("push_tokens").alias("recipient"),
            pl.when(pl.col("_tokens") > 0)
            .then(key_expr(pl.col("send_key"), pl.col("push_tokens")))
            .otherwise(pl.col("send_key"))
            .alias("send_key"),
            _skip_reason(has_address=pl.col("_tokens") > 0, consent=pl.col("push_consent"), missing="no_push_token"),
        )
    )
    columns = [name for name in (*OUTBOX_COLUMNS, *PLANNING_COLUMNS) if name != "status"]
    rows = pl.concat([emails.select(columns), pushes.select(columns)])
    return (
        rows.with_columns(
            pl.when(pl.col("reason").is_null()).then(pl.lit("planned")).otherwise(pl.lit("skipped")).alias("status")
        )
        .select(*OUTBOX_COLUMNS, *PLANNING_COLUMNS)
        .sort("send_key")
        .collect()
    )


def skip_suppressed(
    outbox: pl.DataFrame, channel: str, suppressed: set[str], reason: str = "suppressed"
) -> pl.DataFrame:
    """Planned rows of `channel` to a suppressed address become skips with `reason`: a bounce, an unsubscribe or
    a token FCM called UNREGISTERED (reason "unregistered") is final. Emails match in any case, tokens exactly."""
    if channel == "email":
        hit_address = pl.col("recipient").str.to_lowercase().is_in([address.lower() for address in suppressed])
    else:
        hit_address = pl.col("recipient").is_in(list(suppressed))
    hit = (pl.col("status") == "planned") & (pl.col("channel") == channel) & hit_address
    return outbox.with_columns(
        pl.when(hit).then(pl.lit("skipped")).otherwise(pl.col("status")).alias("status"),
        pl.when(hit).then(pl.lit(reason)).otherwise(pl.col("reason")).alias("reason"),
    )


def _skip_reason(*, has_address: pl.Expr, consent: pl.Expr, missing: str) -> pl.Expr:
    return (
        pl.when(~has_address.fill_null(False))
        .then(pl.lit(missing))
        .when(~consent.fill_null(False))
        .then(pl.lit("no_consent"))
        .otherwise(pl.lit(None, pl.String))
        .alias("reason")
    )
