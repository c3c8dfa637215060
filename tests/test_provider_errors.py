"""The single translation of SDK exceptions into our error classes, and of those into outcomes."""

import email.utils
import json
from urllib.error import URLError

import pytest
import requests
from firebase_admin import exceptions as firebase
from firebase_admin import messaging
from google.auth import exceptions as google_auth
from python_http_client import exceptions as sendgrid

from engine.providers.errors import (
    ConfigurationError,
    InvalidRecipientError,
    PermanentError,
    ProviderError,
    RetryableError,
    from_fcm,
    from_sendgrid,
    to_outcome,
)

NOW = 1_800_000_000.0


def sendgrid_error(status: int, errors: list[dict[str, object]] | None = None, **headers: str) -> Exception:
    body = json.dumps({"errors": errors or [{"field": None, "message": "nope"}]}).encode()
    kind = sendgrid.err_dict.get(status, sendgrid.HTTPError)
    return kind(status, "Reason", body, {k.replace("_", "-"): v for k, v in headers.items()})


def response(status: int, **headers: str) -> requests.Response:
    reply = requests.Response()
    reply.status_code = status
    reply.headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    return reply


def test_sendgrid_429_waits_until_the_rate_limit_reset() -> None:
    error = from_sendgrid(sendgrid_error(429, X_RateLimit_Reset=str(int(NOW) + 42)), NOW)

    assert isinstance(error, RetryableError)
    assert (error.code, error.retry_after) == ("sendgrid_429", 42.0)


def test_sendgrid_429_with_a_reset_already_past_waits_zero() -> None:
    error = from_sendgrid(sendgrid_error(429, X_RateLimit_Reset=str(int(NOW) - 5)), NOW)

    assert isinstance(error, RetryableError) and error.retry_after == 0.0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_sendgrid_server_errors_are_retryable(status: int) -> None:
    error = from_sendgrid(sendgrid_error(status, Retry_After="7"), NOW)

    assert isinstance(error, RetryableError)
    assert (error.code, error.retry_after) == (f"sendgrid_{status}", 7.0)


def test_sendgrid_retry_after_may_be_an_http_date() -> None:
    date = email.utils.formatdate(NOW + 90, usegmt=True)

    error = from_sendgrid(sendgrid_error(503, Retry_After=date), NOW)

    assert isinstance(error, RetryableError) and error.retry_after == 90.0


@pytest.mark.parametrize("status", [401, 403])
def test_sendgrid_auth_failures_are_configuration(status: int) -> None:
    assert isinstance(from_sendgrid(sendgrid_error(status), NOW), ConfigurationError)


def test_sendgrid_400_naming_only_the_recipient_marks_it_invalid() -> None:
    errors = [{"field": "personalizations.0.to.0.email", "message": "Does not contain a valid address."}]

    error = from_sendgrid(sendgrid_error(400, errors), NOW)

    assert isinstance(error, InvalidRecipientError)
    assert error.detail == "personalizations.0.to.0.email: Does not contain a valid address."


@pytest.mark.parametrize("status", [400, 404, 413])
def test_other_sendgrid_4xx_are_permanent(status: int) -> None:
    error = from_sendgrid(sendgrid_error(status, [{"field": "subject", "message": "required"}]), NOW)

    assert type(error) is PermanentError and error.code == f"sendgrid_{status}"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (TimeoutError("timed out"), "timeout"),
        (URLError(TimeoutError("timed out")), "timeout"),
        (URLError(ConnectionRefusedError(111, "refused")), "connection"),
        (ConnectionResetError(104, "reset"), "connection"),
    ],
)
def test_sendgrid_transport_failures_are_retryable(exc: Exception, code: str) -> None:
    error = from_sendgrid(exc, NOW)

    assert isinstance(error, RetryableError) and error.code == code and error.retry_after is None


def test_anything_else_is_a_bug_not_a_provider_error() -> None:
    with pytest.raises(TypeError):
        from_sendgrid(KeyError("x"), NOW)
    with pytest.raises(TypeError):
        from_fcm(KeyError("x"))


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (messaging.UnregisteredError("gone"), InvalidRecipientError, "UNREGISTERED"),
        (firebase.InvalidArgumentError("bad"), PermanentError, "INVALID_ARGUMENT"),
        (messaging.SenderIdMismatchError("other project"), ConfigurationError, "SENDER_ID_MISMATCH"),
        (messaging.ThirdPartyAuthError("apns cert"), ConfigurationError, "THIRD_PARTY_AUTH_ERROR"),
        (firebase.UnauthenticatedError("who"), ConfigurationError, "UNAUTHENTICATED"),
        (firebase.PermissionDeniedError("no"), ConfigurationError, "PERMISSION_DENIED"),
        (firebase.InternalError("oops"), RetryableError, "INTERNAL"),
        (firebase.DeadlineExceededError("slow"), RetryableError, "timeout"),
        (firebase.UnavailableError("no route"), RetryableError, "connection"),
        (firebase.UnavailableError("busy", http_response=response(503)), RetryableError, "UNAVAILABLE"),
        (firebase.UnknownError("bad gateway", http_response=response(502)), RetryableError, "fcm_502"),
        (firebase.UnknownError("teapot", http_response=response(418)), PermanentError, "UNKNOWN"),
    ],
)
def test_fcm_errors_map_to_our_classes(exc: Exception, kind: type[ProviderError], code: str) -> None:
    error = from_fcm(exc)

    assert type(error) is kind and error.code == code


def test_fcm_quota_exceeded_waits_at_least_a_minute() -> None:
    bare = from_fcm(messaging.QuotaExceededError("slow down"))
    told = from_fcm(messaging.QuotaExceededError("slow down", http_response=response(429, Retry_After="300")))

    assert isinstance(bare, RetryableError) and bare.retry_after == 60.0
    assert isinstance(told, RetryableError) and told.retry_after == 300.0


def test_fcm_unavailable_honours_retry_after() -> None:
    error = from_fcm(firebase.UnavailableError("busy", http_response=response(503, Retry_After="12")))

    assert isinstance(error, RetryableError) and error.retry_after == 12.0


def test_fcm_timeouts_wrapped_by_retries_are_timeouts() -> None:
    timeout = requests.exceptions.ReadTimeout("read timed out")

    assert from_fcm(firebase.UnavailableError("gave up", cause=timeout)).code == "timeout"


def test_token_failures_map_by_whether_google_auth_calls_them_retryable() -> None:
    refused = from_fcm(google_auth.RefreshError("invalid_grant", retryable=False))
    flaky = from_fcm(google_auth.RefreshError("server error", retryable=True))
    wrapped = from_fcm(firebase.UnknownError("batch failed", cause=google_auth.RefreshError("invalid_grant")))

    assert isinstance(refused, ConfigurationError) and refused.code == "oauth_refused"
    assert isinstance(flaky, RetryableError) and flaky.code == "oauth_unavailable"
    assert isinstance(wrapped, ConfigurationError)


def test_outcomes_follow_the_error_class() -> None:
    retry = to_outcome("k", RetryableError("sendgrid_429", "later", retry_after=3.0))
    dead = to_outcome("k", InvalidRecipientError("UNREGISTERED", "gone"))
    config = to_outcome("k", ConfigurationError("sendgrid_401", "bad key"))

    assert (retry.status, retry.retry_after, retry.invalid_recipient) == ("retryable", 3.0, False)
    assert (dead.status, dead.invalid_recipient) == ("failed", True)
    assert (config.status, config.error_code, config.invalid_recipient) == ("failed", "sendgrid_401", False)
