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

from engine.providers.errors import FCM_FAILURES, InvalidMessageError, from_fcm, to_outcome
from engine.providers.fcm_endpoint import (
    DEFAULT_RETRIES,
    FCM_BASE_URL,
    encode,
    point_messaging_at,
    skip_regional_access_boundary_lookup,
)
from engine.providers.limits import (
    APNS_MAX_COLLAPSE_ID_BYTES,
    FCM_RESERVED_DATA_KEYS,
    FCM_RESERVED_DATA_PREFIXES,
    fcm_payload_problems,
)
from engine.providers.messages import Outcome, Push, require_unique_send_keys

# send_each refuses more than 500 messages and starts one thread per message; 100 at a time keeps every thread
# on a pooled connection (the pool holds 100, see fcm_endpoint), which two cores cannot outrun anyway.
_CHUNK = 100
# The data keys this sender adds to every push.
_OWN_KEYS = frozenset({"send_key", "run_id"})


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
        """Send every push; one Outcome each, in the order given.

        A push that breaks an FCM or APNs limit (see `limits`) is not sent: its Outcome is `failed` with
        error_code "invalid_message" and a detail naming it, and the others go out as usual. A repeated
        send_key raises ValueError before any I/O: outcomes could not be told apart.
        """
        require_unique_send_keys([p.send_key for p in pushes])
        outcomes: list[Outcome | None] = []
        sendable: list[tuple[int, Push, messaging.Message]] = []
        for push in pushes:
            prepared = self._prepare(push)
            if isinstance(prepared, Outcome):
                outcomes.append(prepared)
            else:
                sendable.append((len(outcomes), push, prepared))
                outcomes.append(None)
        for start in range(0, len(sendable), _CHUNK):
            chunk = sendable[start : start + _CHUNK]
            sent = self._send_chunk([push for _, push, _ in chunk], [message for _, _, message in chunk])
            for (index, _, _), outcome in zip(chunk, sent, strict=True):
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

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
        except ValueError:
            # firebase-admin validates every message before sending any, and one it refuses fails the whole
            # chunk. `_prepare` checks what the SDK checks, so this is rare: find the culprits, send the rest.
            return self._send_encodable(pushes, messages)
        # BatchResponse.responses follows the order of the messages sent.
        return [
            Outcome(p.send_key, "accepted", provider_message_id=r.message_id)
            if r.success
            else to_outcome(p.send_key, from_fcm(r.exception))
            for p, r in zip(pushes, batch.responses, strict=True)
        ]

    def _send_encodable(self, pushes: Sequence[Push], messages: list[messaging.Message]) -> list[Outcome]:
        """Fail the pushes whose message the SDK refuses to encode, send the others, in the order given."""
        outcomes: dict[str, Outcome] = {}
        sendable: list[tuple[Push, messaging.Message]] = []
        for push, message in zip(pushes, messages, strict=True):
            try:
                encode(message)
                sendable.append((push, message))
            except ValueError as exc:
                error = InvalidMessageError(push.send_key, "push", [f"firebase-admin refuses it: {exc}"])
                outcomes[push.send_key] = to_outcome(push.send_key, error)
        if not outcomes:
            raise RuntimeError("send_each raised ValueError although firebase-admin encodes every message")
        if sendable:
            sent = self._send_chunk([p for p, _ in sendable], [m for _, m in sendable])
            outcomes |= {o.send_key: o for o in sent}
        return [outcomes[p.send_key] for p in pushes]

    def _ensure_access_token(self) -> None:
        """Fetch the OAuth token once, before send_each: with a cold credential each of its threads
        would fetch its own."""
        with self._token_lock:
            if not self._credential.valid:
                self._credential.refresh(self._token_request)

    def _prepare(self, push: Push) -> messaging.Message | Outcome:
        """The SDK message for `push`, or its failed Outcome when FCM, APNs or firebase-admin would refuse it.

        The payload is measured on the `data` and `notification` objects the message is built from, which
        the SDK puts on the wire as they are (a test measures the wire copy too): encoding each message here
        as well would cost about 0.14 ms per push, 7% of the SDK's own work.
        """
        problems = _push_problems(push)
        if not problems:
            data = {**push.data, "send_key": push.send_key, "run_id": push.run_id}
            notification = {"title": push.title, "body": push.body}
            problems = fcm_payload_problems(data, notification)
            if not problems:
                return self._message(push, data, notification)
        return to_outcome(push.send_key, InvalidMessageError(push.send_key, "push", problems))

    def _message(self, push: Push, data: dict[str, str], notification: dict[str, str]) -> messaging.Message:
        message = messaging.Message(
            notification=messaging.Notification(**notification),
            data=data,
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


def _push_problems(push: Push) -> list[str]:
    """What FCM, APNs or firebase-admin would refuse in the push's own fields (the payload size aside)."""
    problems = []
    if (
        not isinstance(push.send_key, str)
        or not push.send_key
        or len(push.send_key.encode()) > APNS_MAX_COLLAPSE_ID_BYTES
    ):
        problems.append(f"send_key must be 1 to {APNS_MAX_COLLAPSE_ID_BYTES} bytes (it is the apns-collapse-id)")
    if not isinstance(push.token, str) or not push.token:
        problems.append("no registration token")
    if not isinstance(push.run_id, str):
        problems.append("run_id must be a string")
    for name in ("title", "body"):
        if not isinstance(getattr(push, name), str):
            problems.append(f"{name} must be a string")
    for key, value in push.data.items():
        if not isinstance(key, str) or not isinstance(value, str):
            problems.append(f"data {key!r} must map a string to a string")
        elif key in FCM_RESERVED_DATA_KEYS or key in _OWN_KEYS or key.startswith(FCM_RESERVED_DATA_PREFIXES):
            problems.append(f"data key {key!r} is reserved")
    return problems
