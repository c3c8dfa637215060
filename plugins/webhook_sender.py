"""POST each webhook message, signed, and classify what the endpoint answered.

    2xx                                 accepted (an `X-Message-Id` answer header becomes the provider message id)
    429, 5xx                            retryable, after the Retry-After the endpoint gave (seconds or HTTP date)
    timeout                             retryable as `timeout`: the endpoint may have accepted (in doubt)
    refused or reset connection         retryable as `connection`
    any other status (4xx, 3xx)         failed, `webhook_<status>`: sending the same request again fails the same way

Each attempt is signed afresh (see `plugins.webhook_signature`), so a retry carries a new timestamp and the same
send key. Nothing is refused on our side: the endpoint decides.
"""

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.channels.api import (
    ConfigurationError,
    Outcome,
    refuse_placeholder_secret,
    require_http_url,
    retry_after_seconds,
)
from plugins.webhook_signature import SEND_KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

USER_AGENT = "nudge-webhook/1"


class WebhookSettings(BaseSettings):
    """NUDGE_WEBHOOK_URL (where to POST), NUDGE_WEBHOOK_SECRET (the shared signing secret), NUDGE_WEBHOOK_TIMEOUT."""

    model_config = SettingsConfigDict(env_prefix="NUDGE_WEBHOOK_", extra="ignore")

    url: str | None = None
    secret: SecretStr | None = None
    timeout: float = Field(default=10.0, gt=0)

    _secret_is_real = field_validator("secret")(refuse_placeholder_secret)
    _url_is_url = field_validator("url")(require_http_url)


@dataclass(frozen=True, slots=True)
class WebhookMessage:
    """One message: its JSON body, serialized once so that every attempt signs and sends the same bytes."""

    send_key: str
    body: bytes


class WebhookSender:
    """Sends a wave of messages concurrently, one POST each; one Outcome per message, never raising for an answer."""

    def __init__(
        self, url: str, secret: str, *, timeout: float, workers: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._url = url
        self._secret = secret
        self._timeout = timeout
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook")

    def send(self, messages: Sequence[WebhookMessage]) -> list[Outcome]:
        return list(self._pool.map(self._post, messages))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _post(self, message: WebhookMessage) -> Outcome:
        timestamp = int(self._clock())
        request = urllib.request.Request(
            self._url,
            data=message.body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                SEND_KEY_HEADER: message.send_key,
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(self._secret, timestamp, message.body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
                return Outcome(message.send_key, "accepted", provider_message_id=response.headers.get("X-Message-Id"))
        except urllib.error.HTTPError as error:
            return _answered(message.send_key, error.code, error.headers, _text(error), self._clock())
        except (TimeoutError, urllib.error.URLError) as error:
            if isinstance(error, TimeoutError) or isinstance(error.reason, TimeoutError):
                detail = f"no answer from the webhook in time (it may have accepted): {error}"
                return Outcome(message.send_key, "retryable", error_code="timeout", detail=detail)
            return _unreachable(message.send_key, error)
        except (OSError, http.client.HTTPException) as error:
            return _unreachable(message.send_key, error)


def build_webhook_sender(settings: WebhookSettings, *, workers: int) -> WebhookSender:
    """The sender, or ConfigurationError naming the environment variable to set."""
    if settings.url is None:
        raise ConfigurationError("missing_setting", "NUDGE_WEBHOOK_URL is not set: it must hold the endpoint's URL")
    if settings.secret is None:
        raise ConfigurationError("missing_setting", "NUDGE_WEBHOOK_SECRET is not set: it must hold the signing secret")
    return WebhookSender(settings.url, settings.secret.get_secret_value(), timeout=settings.timeout, workers=workers)


def _answered(send_key: str, status: int, headers: Any, detail: str, now: float) -> Outcome:
    code = f"webhook_{status}"
    if status == 429 or status >= 500:
        wait = retry_after_seconds(headers.get("Retry-After") if headers else None, now)
        return Outcome(send_key, "retryable", error_code=code, detail=detail, retry_after=wait)
    return Outcome(send_key, "failed", error_code=code, detail=detail)


def _unreachable(send_key: str, error: Exception) -> Outcome:
    return Outcome(send_key, "retryable", error_code="connection", detail=f"could not talk to the webhook: {error!r}")


def _text(error: urllib.error.HTTPError) -> str:
    """The endpoint's own words, cut short: a JSON `error` field, else the start of the body."""
    try:
        raw = error.read()[:2000].decode("utf-8", "replace")
    except OSError:
        raw = ""
    try:
        said = json.loads(raw).get("error") if raw.startswith("{") else None
    except ValueError:
        said = None
    return f"HTTP {error.code}: {said or raw[:200] or error.reason}"
