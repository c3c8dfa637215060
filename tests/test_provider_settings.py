"""Settings from the environment and the one composition function that builds senders from them."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.fakes import FakeProviders
from engine.providers.errors import ConfigurationError
from engine.providers.factory import build_senders
from engine.providers.fcm_pool import FcmPushPool
from engine.providers.messages import Email, Push
from engine.providers.settings import FcmSettings, SendGridSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith(("NUDGE_SENDGRID_", "NUDGE_FCM_")):
            monkeypatch.delenv(name)


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[FakeProviders]:
    with FakeProviders(tmp_path) as running:
        yield running


def test_settings_come_from_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUDGE_SENDGRID_API_KEY", "SG.real-looking.key")
    monkeypatch.setenv("NUDGE_SENDGRID_HOST", "http://127.0.0.1:9999/")
    monkeypatch.setenv("NUDGE_SENDGRID_SANDBOX_MODE", "true")
    monkeypatch.setenv("NUDGE_FCM_ENDPOINT", "http://127.0.0.1:9998")
    monkeypatch.setenv("NUDGE_FCM_SERVICE_ACCOUNT_FILE", "secrets/fcm.json")

    sendgrid, fcm = SendGridSettings(), FcmSettings()

    assert sendgrid.api_key is not None and sendgrid.api_key.get_secret_value() == "SG.real-looking.key"
    assert "SG.real" not in repr(sendgrid)
    assert (sendgrid.host, sendgrid.sandbox_mode, sendgrid.timeout) == ("http://127.0.0.1:9999", True, 10.0)
    assert (fcm.endpoint, fcm.service_account_file) == ("http://127.0.0.1:9998", Path("secrets/fcm.json"))


def test_defaults_point_at_the_real_providers() -> None:
    sendgrid, fcm = SendGridSettings(), FcmSettings()

    assert (sendgrid.api_key, sendgrid.host, sendgrid.from_email) == (
        None,
        "https://api.sendgrid.com",
        "hello@example.com",
    )
    assert (fcm.service_account_file, fcm.endpoint) == (None, None)


@pytest.mark.parametrize(
    "secret", ["", "   ", "changeme", "CHANGEME", "xxx", "xxxxxxxxxxxx", "****", "<your key>", "TODO"]
)
def test_empty_and_placeholder_secrets_are_refused(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("NUDGE_SENDGRID_API_KEY", secret)

    with pytest.raises(ValidationError, match="api_key"):
        SendGridSettings()


@pytest.mark.parametrize(
    ("variable", "value"), [("NUDGE_SENDGRID_HOST", "api.sendgrid.com"), ("NUDGE_FCM_ENDPOINT", "localhost:1")]
)
def test_urls_must_say_their_scheme(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValidationError, match="not an http"):
        SendGridSettings() if "SENDGRID" in variable else FcmSettings()


def test_a_missing_api_key_names_its_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="NUDGE_SENDGRID_API_KEY is not set") as raised:
        build_senders(SendGridSettings(), FcmSettings(service_account_file=tmp_path / "sa.json"))

    assert raised.value.code == "missing_setting"


def test_a_missing_service_account_names_its_variable() -> None:
    with pytest.raises(ConfigurationError, match="NUDGE_FCM_SERVICE_ACCOUNT_FILE is not set"):
        build_senders(SendGridSettings(api_key="SG.a-key"), FcmSettings())


def test_an_unusable_service_account_file_is_a_configuration_error(tmp_path: Path) -> None:
    sendgrid = SendGridSettings(api_key="SG.a-key")
    (tmp_path / "broken.json").write_text('{"type": "authorized_user"}')

    with pytest.raises(ConfigurationError, match="is not a readable file"):
        build_senders(sendgrid, FcmSettings(service_account_file=tmp_path / "absent.json"))
    with pytest.raises(ConfigurationError, match="not a usable service account"):
        build_senders(sendgrid, FcmSettings(service_account_file=tmp_path / "broken.json"))


def test_the_fakes_env_makes_build_senders_talk_to_them(fakes: FakeProviders, monkeypatch: pytest.MonkeyPatch) -> None:
    env = fakes.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with build_senders(SendGridSettings(), FcmSettings()) as senders:
        [mailed] = senders["email"].send([Email("k-1", "run-1", "ada@example.com", "Hi", "<p>Hi</p>", "Hi")])
        [pushed] = senders["push"].send([Push("p-1", "run-1", "token-1", "Hi", "There")])

    assert set(env) == {
        "NUDGE_SENDGRID_API_KEY",
        "NUDGE_SENDGRID_HOST",
        "NUDGE_FCM_SERVICE_ACCOUNT_FILE",
        "NUDGE_FCM_ENDPOINT",
    }
    assert (mailed.status, pushed.status) == ("accepted", "accepted")
    assert [r.status for r in fakes.sendgrid.received()] == [202]
    assert [r.path for r in fakes.fcm.received()] == ["/token", "/v1/projects/nudge-demo/messages:send"]
    assert (fakes.directory / "sendgrid-requests.jsonl").read_text().count("\n") == 1
    assert (fakes.directory / "fcm-requests.jsonl").read_text().count("\n") == 2


def test_more_than_one_fcm_process_builds_a_pool_sending_from_its_workers(
    fakes: FakeProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in fakes.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NUDGE_FCM_PROCESSES", "2")

    with build_senders(SendGridSettings(), FcmSettings()) as senders:
        outcomes = senders["push"].send([Push(f"p-{i}", "run-1", f"token-{i}", "Hi", "There") for i in range(4)])
        assert isinstance(senders["push"], FcmPushPool)

    assert [o.status for o in outcomes] == ["accepted"] * 4
    assert sorted(r.path for r in fakes.fcm.received("/v1/")) == ["/v1/projects/nudge-demo/messages:send"] * 4


def test_fcm_processes_must_be_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUDGE_FCM_PROCESSES", "0")

    with pytest.raises(ValidationError, match="processes"):
        FcmSettings()
