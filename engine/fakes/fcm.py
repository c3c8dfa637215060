"""A loopback FCM HTTP v1 API, with its own OAuth token endpoint so the real google-auth flow runs.

The fake generates an RSA key pair and writes a service-account JSON whose `token_uri` is the fake's
`/token`. google-auth signs a JWT assertion with the private key; the fake verifies the RS256 signature
against the public key and hands out a bearer token, which `messages:send` then requires. Errors use
FCM v1's JSON shape, which firebase-admin turns into its typed exceptions (UnregisteredError,
QuotaExceededError, ...): `{"error": {"code", "message", "status", "details": [FcmError]}}`.

Scripting (`fail_next`, `hang_next`, `unregister`, `hold_accepted`) and seeded chaos (`set_chaos`) provoke the
answers dispatch must handle. A Retry-After the fake returned is a promise the client must keep:
`early_requests()` holds every send for the same message before its Retry-After passed, and, after UNAVAILABLE
or INTERNAL (trouble of the whole service), every send once the answer is older than `early_grace`.
"""

import base64
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from engine.fakes.chaos import Chaos
from engine.fakes.server import FakeServer, Reply, Request

TOKEN_PATH = "/token"
FcmErrorCode = Literal[
    "UNREGISTERED",
    "QUOTA_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
    "INVALID_ARGUMENT",
    "SENDER_ID_MISMATCH",
    "THIRD_PARTY_AUTH_ERROR",
]

# FcmError code -> (HTTP status, google.rpc status), as FCM v1 answers them.
_ERRORS: dict[str, tuple[int, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED"),
    "UNAVAILABLE": (503, "UNAVAILABLE"),
    "INTERNAL": (500, "INTERNAL"),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED"),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED"),
}
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
_SEND_PATH = re.compile(r"/v1/projects/(?P<project>[^/]+)/messages:send")
_JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth always addresses its assertion to Google's endpoint, whatever the token_uri.
_GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
_MESSAGING_SCOPES = {
    "https://www.googleapis.com/auth/firebase.messaging",
    "https://www.googleapis.com/auth/cloud-platform",
}
_TARGETS = ("token", "fid", "topic", "condition")
_MAX_PAYLOAD_BYTES = 4096
_MAX_COLLAPSE_ID_BYTES = 64
_TTL = re.compile(r"\d+(\.\d{1,9})?s")
_CLOCK_SKEW = 10.0
# Errors about the service as a whole: their Retry-After applies to every message.
_SERVICE_ERRORS = frozenset({"UNAVAILABLE", "INTERNAL"})


@dataclass(frozen=True, slots=True)
class _Failure:
    code: FcmErrorCode
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class _Hang:
    seconds: float


class FakeFcm(FakeServer):
    """FCM v1 `messages:send` and an OAuth token endpoint on 127.0.0.1.

    Args:
        project_id: the project in the service account and the only one `messages:send` accepts.
        token_lifetime: seconds an issued access token stays valid.
        early_grace: sends for other messages arriving this soon after an UNAVAILABLE or INTERNAL with
            Retry-After are not counted as early; they were already in flight.
        clock: epoch seconds, for arrivals and Retry-After deadlines (tokens expire on real time).
    """

    send_path_prefix = "/v1/projects/"

    def __init__(
        self,
        project_id: str = "nudge-demo",
        *,
        port: int = 0,
        record_file: Path | None = None,
        token_lifetime: int = 3600,
        early_grace: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(port, record_file, clock)
        self._early_grace = early_grace
        self._chaos: Chaos | None = None
        self._early: list[Request] = []
        self._retry_at: dict[str, float] = {}  # message identity -> the end of the Retry-After it was given
        self._service_retry: tuple[float, float] = (0.0, 0.0)  # (when answered, until) for the whole service
        self.project_id = project_id
        self.client_email = f"nudge-fake@{project_id}.iam.gserviceaccount.com"
        self._token_lifetime = token_lifetime
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._key_id = secrets.token_hex(20)
        self._tokens: dict[str, float] = {}  # access token -> expiry, epoch seconds
        self._unregistered: set[str] = set()
        self._script: deque[_Failure | _Hang] = deque()
        self._state = threading.Lock()

    def service_account_info(self) -> dict[str, str]:
        """A service-account key like the Firebase console's, signed by this fake's key pair."""
        private_key = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self._key_id,
            "private_key": private_key,
            "client_email": self.client_email,
            "client_id": "100000000000000000000",
            "token_uri": f"{self.url}{TOKEN_PATH}",
            "universe_domain": "googleapis.com",
        }

    def write_service_account(self, path: Path) -> Path:
        """Write `service_account_info()` as JSON (owner-readable only, like a real key) and return path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.service_account_info(), indent=2), encoding="utf-8")
        path.chmod(0o600)
        return path

    def unregister(self, *tokens: str) -> None:
        """Answer sends to these registration tokens with UNREGISTERED, as for an uninstalled app."""
        with self._state:
            self._unregistered.update(tokens)

    def fail_next(self, code: FcmErrorCode, count: int = 1, *, retry_after: float | None = None) -> None:
        """Answer the next `count` authorized sends with this FCM error, with a Retry-After if given.

        firebase-admin itself retries UNAVAILABLE and INTERNAL (4 times by default), so script one
        more than the retries to let the error reach the caller.
        """
        with self._state:
            self._script.extend(_Failure(code, retry_after) for _ in range(count))

    def hang_next(self, seconds: float, count: int = 1) -> None:
        """Hold the next `count` authorized sends for `seconds` before answering them normally."""
        with self._state:
            self._script.extend(_Hang(seconds) for _ in range(count))

    def set_chaos(self, chaos: Chaos | None) -> None:
        """Inject seeded faults into unscripted sends: QUOTA_EXCEEDED or UNAVAILABLE with Retry-After
        `wait_seconds`, or a hang."""
        with self._state:
            self._chaos = chaos

    def early_requests(self) -> list[Request]:
        """Sends that arrived before a Retry-After the fake had returned was over (see the module docstring)."""
        with self._state:
            return list(self._early)

    def sent_messages(self) -> list[dict[str, Any]]:
        """The `message` objects of accepted sends, oldest first."""
        return [
            r.body["message"]
            for r in self.received()
            if r.status == 200 and _SEND_PATH.fullmatch(r.path) and isinstance(r.body, dict)
        ]

    def handle(self, request: Request) -> Reply:
        if request.method == "POST" and request.path == TOKEN_PATH:
            return self._grant(request)
        match = _SEND_PATH.fullmatch(request.path)
        if request.method != "POST" or match is None:
            return _error(404, "NOT_FOUND", f"{request.method} {request.path} is not part of this API")
        if not self._authorized(request):
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if match["project"] != self.project_id:
            return _error(403, "PERMISSION_DENIED", f"Permission denied on project {match['project']}.")
        identity = _identity(request.body)
        with self._state:
            self._note_if_early(request, identity)
            scripted = self._script.popleft() if self._script else None
        scripted = scripted or self._chaos_answer(identity)
        if isinstance(scripted, _Hang):
            self.pause(scripted.seconds)
        elif scripted is not None:
            self._promise(scripted, request.timestamp, identity)
            return _fcm_error(scripted.code, f"scripted {scripted.code}", retry_after=scripted.retry_after)
        return self._send(request.body)

    def _note_if_early(self, request: Request, identity: str) -> None:
        now = request.timestamp
        answered, until = self._service_retry
        if answered + self._early_grace < now < until or now < self._retry_at.get(identity, 0.0):
            self._early.append(request)

    def _promise(self, failure: _Failure, now: float, identity: str) -> None:
        """Remember the Retry-After sent with `failure`, as the header carries it (whole seconds)."""
        if failure.retry_after is None:
            return
        until = now + round(failure.retry_after)
        with self._state:
            self._retry_at[identity] = max(self._retry_at.get(identity, 0.0), until)
            if failure.code in _SERVICE_ERRORS:
                self._service_retry = (now, max(self._service_retry[1], until))

    def _chaos_answer(self, identity: str) -> _Failure | _Hang | None:
        with self._state:
            chaos = self._chaos
        fault = chaos.fault_for(identity) if chaos is not None else None
        if fault is None or chaos is None:
            return None
        if fault == "rate_limited":
            return _Failure("QUOTA_EXCEEDED", chaos.wait_seconds)
        if fault == "unavailable":
            return _Failure("UNAVAILABLE", chaos.wait_seconds)
        return _Hang(chaos.hang_seconds)

    def _grant(self, request: Request) -> Reply:
        """OAuth 2.0 JWT-bearer grant (RFC 7523), as Google's token endpoint implements it."""
        form = request.body if isinstance(request.body, dict) else {}
        if form.get("grant_type") != _JWT_GRANT:
            return Reply(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."})
        problem = self._assertion_problem(str(form.get("assertion", "")))
        if problem:
            return Reply(400, {"error": "invalid_grant", "error_description": problem})
        token = f"ya29.fake-{secrets.token_urlsafe(24)}"
        with self._state:
            self._tokens[token] = time.time() + self._token_lifetime
        return Reply(200, {"access_token": token, "expires_in": self._token_lifetime, "token_type": "Bearer"})

    def _assertion_problem(self, assertion: str) -> str | None:
        try:
            header_part, claims_part, signature_part = assertion.split(".")
            header = json.loads(_b64decode(header_part))
            claims = json.loads(_b64decode(claims_part))
            signature = _b64decode(signature_part)
        except ValueError:
            return "Invalid JWT: malformed assertion."
        if header.get("alg") != "RS256" or header.get("kid") != self._key_id:
            return "Invalid JWT: unknown key or algorithm."
        try:
            self._key.public_key().verify(
                signature, f"{header_part}.{claims_part}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return "Invalid JWT Signature."
        now = time.time()
        if claims.get("iss") != self.client_email or claims.get("aud") not in (
            _GOOGLE_TOKEN_AUDIENCE,
            f"{self.url}{TOKEN_PATH}",
        ):
            return "Invalid JWT: wrong issuer or audience."
        if not (claims.get("iat", 0) - _CLOCK_SKEW <= now < claims.get("exp", 0) + _CLOCK_SKEW):
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
        if not _MESSAGING_SCOPES & set(str(claims.get("scope", "")).split()):
            return "Invalid JWT: no scope that allows sending messages."
        return None

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        with self._state:
            expiry = self._tokens.get(token)
        return scheme == "Bearer" and expiry is not None and time.time() < expiry

    def _send(self, body: Any) -> Reply:
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict):
            return _invalid("message", "The message is missing.")
        violation = _violation(message)
        if violation is not None:
            return _invalid(*violation)
        with self._state:
            unregistered = message.get("token") in self._unregistered or message.get("fid") in self._unregistered
        if unregistered:
            return _fcm_error("UNREGISTERED", "Requested entity was not found.")
        if body.get("validate_only"):
            return Reply(200, {"name": f"projects/{self.project_id}/messages/fake_message_id"})
        message_id = f"0:{time.time_ns() // 1000}%{secrets.token_hex(8)}"
        return Reply(200, {"name": f"projects/{self.project_id}/messages/{message_id}"})


def _identity(body: Any) -> str:
    """What makes two sends the same message: nudge's send key in the data, else the target."""
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, dict):
        return ""
    data = message.get("data")
    key = data.get("send_key") if isinstance(data, dict) else None
    return str(key or message.get("token") or message.get("fid") or "")


def _violation(message: dict[str, Any]) -> tuple[str, str] | None:
    """The first (field, description) FCM would reject this message for, or None."""
    targets = [t for t in _TARGETS if message.get(t)]
    if len(targets) != 1:
        return "message", "Exactly one of token, fid, topic or condition must be set."
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        return "message.data", "Invalid value at 'message.data': data values must be strings."
    # FCM's 4096-byte limit counts the payload a device receives: data and notification.
    payload = json.dumps({"data": data, "notification": message.get("notification", {})}).encode()
    if len(payload) > _MAX_PAYLOAD_BYTES:
        return "message", f"Message is too big: {len(payload)} bytes, at most {_MAX_PAYLOAD_BYTES} allowed."
    android = message.get("android", {})
    if "ttl" in android and not _TTL.fullmatch(str(android["ttl"])):
        return "message.android.ttl", "Invalid duration: expected seconds with an 's' suffix."
    collapse_id = message.get("apns", {}).get("headers", {}).get("apns-collapse-id", "")
    if len(collapse_id.encode()) > _MAX_COLLAPSE_ID_BYTES:
        return "message.apns.headers", f"apns-collapse-id exceeds {_MAX_COLLAPSE_ID_BYTES} bytes."
    return None


def _error(status: int, rpc_status: str, message: str, details: list[dict[str, Any]] | None = None) -> Reply:
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = details
    return Reply(status, {"error": error})


def _fcm_error(code: FcmErrorCode, message: str, *, retry_after: float | None = None) -> Reply:
    status, rpc_status = _ERRORS[code]
    reply = _error(status, rpc_status, message, [{"@type": _FCM_ERROR_TYPE, "errorCode": code}])
    if retry_after is None:
        return reply
    return Reply(reply.status, reply.body, {"Retry-After": str(round(retry_after))})


def _invalid(field: str, description: str) -> Reply:
    details: list[dict[str, Any]] = [
        {"@type": _FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"},
        {"@type": _BAD_REQUEST_TYPE, "fieldViolations": [{"field": field, "description": description}]},
    ]
    return _error(400, "INVALID_ARGUMENT", description, details)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
