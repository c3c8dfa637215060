"""The built-in push channel: FCM, to each of the user's `push_tokens` with `push_consent`.

A push goes to each device token, each its own row with its own key, so that an unregistered token or a retry
concerns one device and never re-sends to the others. A token FCM called UNREGISTERED is final: a planned push
to it is skipped as `unregistered`.
"""

from collections.abc import Mapping
from typing import Any

import polars as pl

from engine.channels.channel import Channel, Claimed, Sender
from engine.channels.planning import address_key, skip_reason
from engine.providers.messages import Push
from engine.render import TemplateStore


def plan(sends: pl.LazyFrame, users: pl.LazyFrame) -> pl.LazyFrame:
    """One row per distinct token (first-seen order); one `no_push_token` skip for a user without any."""
    contacts = users.select("user_id", "push_tokens", "push_consent")
    return (
        sends.join(contacts, on="user_id", how="left")
        .with_columns(pl.col("push_tokens").list.unique(maintain_order=True).alias("push_tokens"))
        .with_columns(pl.col("push_tokens").fill_null([]).list.len().alias("_tokens"))
        .explode("push_tokens", empty_as_null=True)
        .with_columns(
            pl.col("push_tokens").alias("recipient"),
            pl.when(pl.col("_tokens") > 0)
            .then(address_key(pl.col("send_key"), pl.col("push_tokens")))
            .otherwise(pl.col("send_key"))
            .alias("send_key"),
            skip_reason(has_address=pl.col("_tokens") > 0, consent=pl.col("push_consent"), missing="no_push_token"),
        )
    )


def check_template(store: TemplateStore, template: str, sample: Mapping[str, Any]) -> str:
    return store.validate_push(template, sample).version


def compose(claimed: Claimed, store: TemplateStore) -> Push:
    push = store.push(claimed.template).render(claimed.context)
    data = {"journey": claimed.journey, "template": claimed.template}
    return Push(claimed.send_key, claimed.run_id, claimed.recipient, push.title, push.body, data)


def build_sender() -> Sender:
    # Imported here: the SDKs load only in a process that sends, not wherever definitions are validated.
    from engine.providers.factory import build_push_sender
    from engine.providers.settings import FcmSettings

    return build_push_sender(FcmSettings())


PUSH = Channel(
    name="push",
    plan=plan,
    check_template=check_template,
    compose=compose,
    build_sender=build_sender,
    wave_size=100,  # one FCM send_each chunk
    rate_limit="nudge-fcm",
    suppression_source="fcm",
    suppression_reason="unregistered",
)
