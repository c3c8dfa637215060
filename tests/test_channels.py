"""The channel registry: the built-in channels keep today's settings, plugins load by name or are refused loudly,
and every place that used to list email and push now follows the registry."""

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import polars as pl
import pytest
from pydantic import ValidationError

import engine.channels.registry
from engine.channels.email import EMAIL
from engine.channels.registry import ChannelPluginError, channel, channels, load_channel_plugins, register_channel
from engine.dispatch_policy import DispatchSettings, WallClock
from engine.journeys import SEND_SCHEMA
from engine.outbox import plan_outbox
from models.delivery import DeliveryPolicy
from models.rules import EngagementSpec
from tasks.pacing import rate_limits

LETTER = replace(EMAIL, name="letter", wave_size=3, rate_limit="nudge-post", suppression_source="post")


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A registry of the built-ins only, put back after the test."""
    monkeypatch.setattr(engine.channels.registry, "_REGISTERED", {})
    monkeypatch.delenv("NUDGE_CHANNEL_PLUGINS", raising=False)
    yield


def test_the_built_in_channels_keep_their_settings(registry):
    assert list(channels()) == ["email", "push"]
    email, push = channel("email"), channel("push")
    assert (email.wave_size, email.rate_limit, email.suppression_reason, email.fold_case) == (
        500, "nudge-sendgrid", "suppressed", True,
    )  # fmt: skip
    assert (push.wave_size, push.rate_limit, push.suppression_reason, push.fold_case) == (
        100, "nudge-fcm", "unregistered", False,
    )  # fmt: skip
    assert email.normalize(" Ada@Example.COM ") == "ada@example.com" and push.normalize(" T-1 ") == "T-1"
    with pytest.raises(KeyError, match=r"unknown channel 'sms'.*email, push"):
        channel("sms")


def test_a_registered_channel_is_known_everywhere_channels_are_named(registry, monkeypatch):
    with pytest.raises(ValidationError, match="unknown channel 'letter'"):
        DeliveryPolicy.model_validate({"caps": {"letter": {"per_day": 1}}})
    with pytest.raises(ValidationError, match="unknown channel 'letter'"):
        EngagementSpec.model_validate({"journey": "j", "channel": "letter"})

    register_channel(LETTER)
    assert list(channels()) == ["email", "push", "letter"]
    policy = DeliveryPolicy.model_validate(
        {"caps": {"letter": {"per_day": 1}}, "journey_caps": {"j": {"push": {"per_week": 2}}}}
    )
    assert set(policy.caps) == {"letter"}
    assert EngagementSpec.model_validate({"journey": "j", "channel": "letter"}).channel == "letter"
    assert rate_limits() == {"email": "nudge-sendgrid", "push": "nudge-fcm", "letter": "nudge-post"}

    monkeypatch.setenv("NUDGE_DISPATCH_LETTER_WAVE_SIZE", "5")
    settings = DispatchSettings()
    assert [settings.policy(name, WallClock()).wave_size for name in ("email", "push", "letter")] == [500, 100, 5]


def test_a_wave_size_from_the_environment_must_be_positive(registry, monkeypatch):
    monkeypatch.setenv("NUDGE_DISPATCH_EMAIL_WAVE_SIZE", "0")
    with pytest.raises(ValidationError, match=r"wave_sizes\.email"):
        DispatchSettings()


def test_registering_another_channel_under_a_taken_name_is_refused(registry):
    register_channel(LETTER)
    register_channel(LETTER)  # the same one again: harmless, as when a plugin module is listed twice
    with pytest.raises(ValueError, match="'letter' is already registered"):
        register_channel(replace(LETTER, wave_size=4))
    with pytest.raises(ValueError, match="'email' is already registered"):
        register_channel(replace(LETTER, name="email"))


def test_plugins_load_from_the_environment_or_fail_naming_it(registry, monkeypatch):
    with pytest.raises(ChannelPluginError, match=r"NUDGE_CHANNEL_PLUGINS names 'plugins\.absent', which cannot be"):
        load_channel_plugins("plugins.absent")
    with pytest.raises(ChannelPluginError, match="'json', which defines no CHANNEL"):
        load_channel_plugins("json")
    assert load_channel_plugins() == []

    monkeypatch.setenv("NUDGE_CHANNEL_PLUGINS", " plugins.webhook_channel, ")
    assert load_channel_plugins() == ["webhook"]
    assert load_channel_plugins() == ["webhook"]  # idempotent
    assert list(channels()) == ["email", "push", "webhook"]


def test_planning_refuses_sends_on_a_channel_nobody_registered(registry):
    sends = pl.DataFrame(
        {"send_key": ["k"], "instance_id": ["i"], "journey": ["j"], "version": ["v"], "user_id": ["u"], "node": ["n"],
         "channel": ["letter"], "template": ["t"], "variant": [None], "transactional": [False], "priority": [0]},
        schema=SEND_SCHEMA,
    )  # fmt: skip
    users = pl.LazyFrame(
        {"user_id": ["u"], "email": ["u@example.com"], "email_consent": [True], "push_tokens": [["t"]],
         "push_consent": [True]}
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"unregistered channel\(s\) \['letter'\]"):
        plan_outbox(sends, users, run_id="r", as_of=datetime(2026, 10, 1, tzinfo=UTC))
    register_channel(LETTER)
    [row] = plan_outbox(sends, users, run_id="r", as_of=datetime(2026, 10, 1, tzinfo=UTC)).iter_rows(named=True)
    assert (row["channel"], row["recipient"], row["status"]) == ("letter", "u@example.com", "planned")
