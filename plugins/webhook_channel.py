"""A signed webhook channel, written against the channel extension point alone (`engine.channels.api`).

Load it with `NUDGE_CHANNEL_PLUGINS=plugins.webhook_channel`; then `send: {channel: webhook, template: T}` POSTs
one JSON body per message to NUDGE_WEBHOOK_URL, signed with NUDGE_WEBHOOK_SECRET (`plugins.webhook_signature`
says how a receiver verifies it; `plugins.webhook_sender` how answers are classified).

Recipient: the user's `webhook_id` attribute when the snapshot has that column and the user a non-blank value,
else the `user_id` itself: the endpoint is one of our own systems (a CRM, an in-app inbox) that may key users
its own way. Consent: when the snapshot has a `webhook_consent` column, a user without a true value is skipped as
`no_consent`; without the column the receiving system is trusted to hold consent.

Template: `templates/webhook/<name>/body.json.j2` renders a JSON object (write values with `|tojson`), with the
same context builders as email and push. The body sent is

    {"send_key": ..., "run_id": ..., "recipient": ..., "journey": ..., "template": ..., "payload": <the object>}

serialized with sorted keys and no spaces, so each attempt of a message sends the very same bytes.
"""

import json
from collections.abc import Mapping
from typing import Any

import polars as pl

from engine.channels.api import Channel, Claimed, Sender, TemplateRenderError, TemplateStore
from plugins.webhook_sender import WebhookMessage, WebhookSettings, build_webhook_sender

NAME = "webhook"
TEMPLATE_FILES = ("body.json.j2",)
RECIPIENT_ATTRIBUTE = "webhook_id"
CONSENT_ATTRIBUTE = "webhook_consent"
WAVE_SIZE = 16  # concurrent POSTs, and the sender's threads


def plan(sends: pl.LazyFrame, users: pl.LazyFrame) -> pl.LazyFrame:
    """One row per send, to the user's webhook id or user id; `no_consent` only where the snapshot says so."""
    columns = users.collect_schema().names()
    recipient = pl.col("user_id")
    if RECIPIENT_ATTRIBUTE in columns:
        own = pl.col(RECIPIENT_ATTRIBUTE).cast(pl.String).str.strip_chars()
        recipient = pl.when(own.fill_null("") != "").then(own).otherwise(recipient)
    consented = pl.col(CONSENT_ATTRIBUTE).fill_null(False) if CONSENT_ATTRIBUTE in columns else pl.lit(True)
    kept = [name for name in (RECIPIENT_ATTRIBUTE, CONSENT_ATTRIBUTE) if name in columns]
    return sends.join(users.select("user_id", *kept), on="user_id", how="left").with_columns(
        recipient.alias("recipient"),
        pl.when(consented).then(pl.lit(None, pl.String)).otherwise(pl.lit("no_consent")).alias("reason"),
    )


def check_template(store: TemplateStore, template: str, sample: Mapping[str, Any]) -> str:
    version, files = store.load(NAME, template, TEMPLATE_FILES)
    store.check(sample, files, lambda context: _payload(store, template, context))
    return version


def compose(claimed: Claimed, store: TemplateStore) -> WebhookMessage:
    body = {
        "send_key": claimed.send_key,
        "run_id": claimed.run_id,
        "recipient": claimed.recipient,
        "journey": claimed.journey,
        "template": claimed.template,
        "payload": _payload(store, claimed.template, claimed.context),
    }
    return WebhookMessage(claimed.send_key, json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def build_sender() -> Sender:
    return build_webhook_sender(WebhookSettings(), workers=WAVE_SIZE)


def _payload(store: TemplateStore, template: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """The template rendered and parsed: a body that is not a JSON object is a template bug, never sent."""
    _, (file,) = store.load(NAME, template, TEMPLATE_FILES)
    text = file.render(context)
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise TemplateRenderError(file.path, f"did not render JSON ({exc}): {text[:80]!r}") from exc
    if not isinstance(payload, dict):
        raise TemplateRenderError(file.path, f"must render a JSON object, got {type(payload).__name__}")
    return payload


CHANNEL = Channel(
    name=NAME,
    plan=plan,
    check_template=check_template,
    compose=compose,
    build_sender=build_sender,
    wave_size=WAVE_SIZE,
    rate_limit="nudge-webhook",
    suppression_source=NAME,
)
