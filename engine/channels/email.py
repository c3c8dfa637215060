"""The built-in email channel: SendGrid, to the user's `email` attribute with `email_consent`."""

from collections.abc import Mapping
from typing import Any

import polars as pl

from engine.channels.channel import Channel, Claimed, Sender
from engine.channels.planning import skip_reason
from engine.providers.messages import Email
from engine.render import TemplateStore


def plan(sends: pl.LazyFrame, users: pl.LazyFrame) -> pl.LazyFrame:
    """One row per send, to the user's address; `no_email` without one, `no_consent` without consent."""
    contacts = users.select("user_id", "email", "email_consent")
    return sends.join(contacts, on="user_id", how="left").with_columns(
        pl.col("email").alias("recipient"),
        skip_reason(
            has_address=pl.col("email").fill_null("").str.strip_chars() != "",
            consent=pl.col("email_consent"),
            missing="no_email",
        ),
    )


def check_template(store: TemplateStore, template: str, sample: Mapping[str, Any]) -> str:
    return store.validate_email(template, sample).version


def compose(claimed: Claimed, store: TemplateStore) -> Email:
    """The rendered email; its categories let SendGrid's statistics and events be grouped by journey and template."""
    email = store.email(claimed.template).render(claimed.context)
    categories = (f"journey:{claimed.journey}", f"template:{claimed.template}")
    return Email(claimed.send_key, claimed.run_id, claimed.recipient, email.subject, email.html, email.text, categories)


def build_sender() -> Sender:
    # Imported here: the SDKs load only in a process that sends, not wherever definitions are validated.
    from engine.providers.factory import build_email_sender
    from engine.providers.settings import SendGridSettings

    return build_email_sender(SendGridSettings())


EMAIL = Channel(
    name="email",
    plan=plan,
    check_template=check_template,
    compose=compose,
    build_sender=build_sender,
    # The SendGrid sender's batch size (DEFAULT_BATCH_SIZE, not imported: the SDK loads only where mail is sent).
    # A wave is marked `sending` before its requests, and one request carries the whole wave (emails of other
    # categories, or to a repeated address, go in requests of their own), so a crash leaves at most one wave in
    # doubt: about the emails of one request, which share its answer anyway. Smaller waves only add requests.
    wave_size=500,
    rate_limit="nudge-sendgrid",
    suppression_source="sendgrid",
    fold_case=True,  # mailbox providers ignore case
)
