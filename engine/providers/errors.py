"""Our provider errors, and the one place where SDK exceptions are translated into them.

    ProviderError                    any trouble a provider reported; carries a stable `code`
    ├── RetryableError               the same message may go through later (`retry_after`: seconds, when said)
    ├── PermanentError               this message will not go through as it is
    │   ├── InvalidRecipientError    the address or token is dead: stop sending to it
    │   └── InvalidMessageError      refused by our own checks (see `limits`): it never reached the provider
    └── ConfigurationError           our credentials or setup are wrong: fix them, do not blame the recipient

Retry decisions anywhere else look only at these classes, or at the `Outcome` built from them by
`to_outcome`, never at SDK exception types: upgrading or swapping an SDK touches this module alone.
"""

import email.utils
import http.client
import json
import re
import time
from collections.abc import Mapping
from urllib.error import URLError

import requests
import urllib3
from firebase_admin import exceptions as firebase
from firebase_admin import messaging
from google.auth import exceptions as google_auth
from python_http_client.exceptions import HTTPError as SendGridHTTPError

from engine.providers.messages import Outcome


class ProviderError(Exception):
    """Any trouble a provider reported about a message or about our access to it."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class RetryableError(ProviderError):
    """Worth sending again later; `retry_after` is the provider's requested wait in seconds, if any."""

    def __init__(self, code: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(code, detail)
        self.retry_after = retry_after


class PermanentError(ProviderError):
    """Sending the same message again will fail the same way."""


class InvalidRecipientError(PermanentError):
    """The address or token can never receive: the caller removes it."""


class InvalidMessageError(PermanentError):
    """The message breaks a provider limit or rule we check locally; no request was made for it.

    `detail` names the message's send_key and every problem found, so that one reading fixes them all.
    """

    def __init__(self, send_key: str, kind: str, problems: list[str]) -> None:
        super().__init__("invalid_message", f"{kind} {send_key!r} cannot be sent: {'; '.join(problems)}")


class ConfigurationError(ProviderError):
    """Our credentials or settings are wrong; every message would fail until someone fixes them."""


# What the SendGrid client raises for a send that did not go through; anything else is a bug of ours.
# URLError, TimeoutError and ConnectionError are all OSErrors; HTTPException covers truncated answers.
SENDGRID_FAILURES: tuple[type[Exception], ...] = (SendGridHTTPError, OSError, http.client.HTTPException)

# What firebase-admin raises (or puts in a BatchResponse) for a push, plus google-auth's token errors,
# which reach us when the OAuth token cannot be fetched before a batch.
FCM_FAILURES: tuple[type[Exception], ...] = (firebase.FirebaseError, google_auth.GoogleAuthError)

# The only error field SendGrid names when the recipient's address itself is unusable.
_RECIPIENT_FIELD = re.compile(r"personalizations\.\d+\.(to|cc|bcc)\.\d+\.email")

# FCM asks for at least a minute of back-off on QUOTA_EXCEEDED even when it sends no Retry-After.
_FCM_QUOTA_MIN_WAIT = 60.0


def to_outcome(send_key: str, error: ProviderError) -> Outcome:
    """The Outcome a sender reports for a message that failed with `error`."""
    if isinstance(error, RetryableError):
        return Outcome(send_key, "retryable", error_code=error.code, detail=error.detail, retry_after=error.retry_after)
    return Outcome(
        send_key,
        "failed",
        error_code=error.code,
        detail=error.detail,
        invalid_recipient=isinstance(error, InvalidRecipientError),
    )


def from_sendgrid(exc: Exception, now: float) -> ProviderError:
    """Translate what the SendGrid client raised; `now` (epoch seconds) turns X-RateLimit-Reset into a wait.

    429, 5xx, connection errors and timeouts are retryable; 401/403 mean our key is wrong; a 400 that
    names only the recipient's address marks the recipient invalid; any other 4xx is permanent.
    A timeout is retryable although SendGrid may already have accepted the email: SendGrid has no
    idempotency key, so a retry after a timeout can duplicate a message.
    """
    if isinstance(exc, SendGridHTTPError):
        status = int(exc.status_code)
        code = f"sendgrid_{status}"
        errors = _sendgrid_errors(exc.body)
        detail = "; ".join(f"{e.get('field') or 'request'}: {e.get('message')}" for e in errors)
        detail = detail or f"HTTP {status} {exc.reason}"
        headers = exc.headers or {}
        if status == 429:
            return RetryableError(code, detail, _rate_limit_wait(headers, now))
        if status >= 500:
            return RetryableError(code, detail, _retry_after(headers, now))
        if status in (401, 403):
            return ConfigurationError(code, detail)
        if errors and all(_RECIPIENT_FIELD.fullmatch(str(e.get("field"))) for e in errors):
            return InvalidRecipientError(code, detail)
        return PermanentError(code, detail)
    if isinstance(exc, TimeoutError) or (isinstance(exc, URLError) and isinstance(exc.reason, TimeoutError)):
        return RetryableError("timeout", f"no answer from SendGrid in time (it may have accepted): {exc}")
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return RetryableError("connection", f"could not talk to SendGrid: {exc!r}")
    raise TypeError(f"not a SendGrid failure: {exc!r}") from exc


def from_fcm(exc: Exception) -> ProviderError:
    """Translate a firebase-admin (or google-auth token) exception for one push or a whole batch."""
    if isinstance(exc, messaging.UnregisteredError):
        return InvalidRecipientError("UNREGISTERED", str(exc))
    if isinstance(exc, messaging.QuotaExceededError):
        wait = max(_fcm_retry_after(exc) or 0.0, _FCM_QUOTA_MIN_WAIT)
        return RetryableError("QUOTA_EXCEEDED", str(exc), wait)
    if isinstance(exc, messaging.SenderIdMismatchError):
        return ConfigurationError("SENDER_ID_MISMATCH", str(exc))
    if isinstance(exc, messaging.ThirdPartyAuthError):
        return ConfigurationError("THIRD_PARTY_AUTH_ERROR", str(exc))
    if isinstance(exc, firebase.InvalidArgumentError):
        return PermanentError("INVALID_ARGUMENT", str(exc))
    if isinstance(exc, firebase.DeadlineExceededError):
        return RetryableError("timeout", str(exc))
    if isinstance(exc, firebase.UnavailableError) and exc.http_response is None:
        code = "timeout" if _is_timeout(exc.cause) else "connection"
        return RetryableError(code, str(exc))
    if isinstance(exc, (firebase.UnavailableError, firebase.InternalError, firebase.ResourceExhaustedError)):
        return RetryableError(exc.code, str(exc), _fcm_retry_after(exc))
    if isinstance(exc, (firebase.UnauthenticatedError, firebase.PermissionDeniedError, firebase.NotFoundError)):
        return ConfigurationError(exc.code, str(exc))
    if isinstance(exc, firebase.FirebaseError):
        if isinstance(exc.cause, google_auth.GoogleAuthError):
            return from_fcm(exc.cause)
        status = exc.http_response.status_code if exc.http_response is not None else None
        if status is not None and status >= 500:
            return RetryableError(f"fcm_{status}", str(exc), _fcm_retry_after(exc))
        return PermanentError(exc.code, str(exc))
    if isinstance(exc, google_auth.RefreshError):
        if exc.retryable:
            return RetryableError("oauth_unavailable", f"could not fetch an FCM access token: {exc}")
        return ConfigurationError("oauth_refused", f"the token endpoint refused our service account: {exc}")
    if isinstance(exc, google_auth.GoogleAuthError):
        return RetryableError("connection", f"could not reach the token endpoint: {exc}")
    raise TypeError(f"not an FCM failure: {exc!r}") from exc


def _sendgrid_errors(body: bytes | str | None) -> list[dict[str, object]]:
    try:
        parsed = json.loads(body or b"")
    except ValueError:
        return []
    errors = parsed.get("errors") if isinstance(parsed, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _rate_limit_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds until SendGrid's X-RateLimit-Reset (epoch seconds), falling back to Retry-After."""
    value = headers.get("X-RateLimit-Reset")
    try:
        return max(float(value) - now, 0.0) if value is not None else _retry_after(headers, now)
    except ValueError:
        return _retry_after(headers, now)


def _retry_after(headers: Mapping[str, str], now: float) -> float | None:
    return retry_after_seconds(headers.get("Retry-After"), now)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header, which holds either seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(email.utils.parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError):
        return None


def _fcm_retry_after(exc: firebase.FirebaseError) -> float | None:
    response = exc.http_response
    return _retry_after(response.headers, time.time()) if response is not None else None


def _is_timeout(cause: object) -> bool:
    """Whether a requests error came from a timeout; retries wrap read timeouts in ConnectionError."""
    if isinstance(cause, requests.exceptions.Timeout):
        return True
    reason = getattr(cause.args[0], "reason", None) if isinstance(cause, Exception) and cause.args else None
    return isinstance(reason, urllib3.exceptions.TimeoutError)
