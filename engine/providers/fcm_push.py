"""Pushes through firebase-admin: `messaging.send_each` on a named App of our own, 100 at a time."""

import functools
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import firebase_admin
import google.auth.transport.requests
from firebase_admin import credentials, messaging
from urllib3.util.retry import Retry

from engine.providers.errors import FCM_FAILURES, from_fcm, to_outcome
from engine.providers.fcm_endpoint import (
    DEFAULT_RETRIES,
    FCM_BASE_URL,
    point_messaging_at,
    skip_regional_access_boundary_lookup,
)
from engine.providers.messages import Outcome, Push, require_unique_send_keys

# send_each refuses more than 500 messages and starts one thread per message; 100 at a time keeps every thread
# on a pooled connection (the pool holds 100, see fcm_endpoint), which two cores cannot outrun anyway.
_CHUNK = 100
# APNs drops an apns-collapse-id longer than 64 bytes.
_MAX_COLLAPSE_ID_BYTES = 64
# Data keys FCM reserves for itself, and the ones this sender adds.
_RESERVED_KEYS = frozenset({"from", "notification", "message_type", "send_key", "run_id"})
_RESERVED_PREFIXES = ("google.", "gcm.")


class FcmPushSender:
    """Sends pushes to FCM registration tokens with the credentials of one service account.

    Each sender initializes its own firebase_admin App (named `app_name` plus a unique suffix) so that
    senders with different accounts or endpoints coexist in one process; `close()` deletes it.
    """

    def __init__(
        self,
        service_account_file: Path,
        endpoint: str | None = None,
        app_name: str = "nudge",
        ttl_seconds: int = 86400,
        *,
        timeout: float = 10.0,
        retries: Retry = DEFAULT_RETRIES,
    ) -> None:
        certificate = credentials.Certificate(str(service_account_file))
        self._credential = certificate.get_credential()
        self._app = firebase_admin.initialize_app(
            certificate, {"httpTimeout": timeout}, name=f"{app_name}-{uuid.uuid4().hex[:12]}"
        )
        try:
            point_messaging_at(self._app, endpoint or FCM_BASE_URL, retries)
        except BaseException:
            firebase_admin.delete_app(self._app)
            raise
        if endpoint is not None:
            skip_regional_access_boundary_lookup(self._credential)
        # Token requests otherwise wait up to google-auth's default of 120 s for a hung token endpoint.
        self._token_request = functools.partial(google.auth.transport.requests.Request(), timeout=timeout)
        self._token_lock = threading.Lock()
        self._ttl_seconds = ttl_seconds
        self._closed = False

    def send(self, pushes: Sequence[Push]) -> list[Outcome]:
        """Send every push; one Outcome each, in the order given. Invalid pushes raise before any I/O."""
        require_unique_send_keys([p.send_key for p in pushes])
        messages = [self._message(p) for p in pushes]
        outcomes: list[Outcome] = []
        for start in range(0, len(pushes), _CHUNK):
            outcomes += self._send_chunk(pushes[start : start + _CHUNK], messages[start : start + _CHUNK])
        return outcomes

    def close(self) -> None:
        """Delete this sender's firebase_admin App. Call it outside a running event loop (the SDK
        closes its async client with asyncio.run)."""
        if not self._closed:
            self._closed = True
            firebase_admin.delete_app(self._app)

    def _send_chunk(self, pushes: Sequence[Push], messages: list[messaging.Message]) -> list[Outcome]:
        try:
            self._ensure_access_token()
            batch = messaging.send_each(messages, app=self._app)
        except FCM_FAILURES as exc:
            error = from_fcm(exc)
            return [to_outcome(p.send_key, error) for p in pushes]
        # BatchResponse.responses follows the order of the messages sent.
        return [
            Outcome(p.send_key, "accepted", provider_message_id=r.message_id)
            if r.success
            else to_outcome(p.send_key, from_fcm(r.exception))
            for p, r in zip(pushes, batch.responses, strict=True)
        ]

    def _ensure_access_token(self) -> None:
        """Fetch the OAuth token once, before send_each: with a cold credential each of its threads
        would fetch its own."""
        with self._token_lock:
            if not self._credential.valid:
                self._credential.refresh(self._token_request)

    def _message(self, push: Push) -> messaging.Message:
        _check(push)
        message = messaging.Message(
            notification=messaging.Notification(title=push.title, body=push.body),
            data={**push.data, "send_key": push.send_key, "run_id": push.run_id},
            android=messaging.AndroidConfig(
                ttl=self._ttl_seconds, notification=messaging.AndroidNotification(tag=push.send_key)
            ),
            apns=messaging.APNSConfig(
                headers={
                    "apns-collapse-id": push.send_key,
                    "apns-expiration": str(int(time.time()) + self._ttl_seconds),
                }
            ),
        )
        # firebase-admin 7.5+ deprecates Message(token=...) in favour of fid= (Firebase installation
        # IDs, which apps on the new client SDKs register). Ours are registration tokens, and those go
        # in `token` on the wire. Assigning the attribute avoids the constructor's DeprecationWarning
        # without warnings.catch_warnings, which swaps process-wide state and is not thread-safe.
        message.token = push.token
        return message


def _check(push: Push) -> None:
    """Refuse what FCM or APNs would refuse or silently drop, before any request, naming the send_key."""
    problems = []
    if not push.send_key or len(push.send_key.encode()) > _MAX_COLLAPSE_ID_BYTES:
        problems.append(f"send_key must be 1 to {_MAX_COLLAPSE_ID_BYTES} bytes (it is the apns-collapse-id)")
    if not push.token:
        problems.append("no registration token")
    for key, value in push.data.items():
        if not isinstance(key, str) or not isinstance(value, str):
            problems.append(f"data {key!r} must map a string to a string")
        elif key in _RESERVED_KEYS or key.startswith(_RESERVED_PREFIXES):
            problems.append(f"data key {key!r} is reserved")
    if problems:
        raise ValueError(f"push {push.send_key!r} cannot be sent: {'; '.join(problems)}")
