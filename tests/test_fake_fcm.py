"""The FCM fake on the wire: its OAuth token endpoint, messages:send validation, and error shapes
that firebase-admin must turn into its own exception types."""

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import firebase_admin
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from firebase_admin import credentials, exceptions, messaging
from google.auth import crypt, jwt

from engine.fakes import FakeFcm
from engine.providers.fcm_endpoint import DEFAULT_RETRIES, point_messaging_at, skip_regional_access_boundary_lookup
from tests.fcm_fake import fresh_fcm_record, module_fake_fcm  # noqa: F401 (fixtures)

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
SEND = "/v1/projects/nudge-demo/messages:send"


def call(url: str, body: Any, *, token: str | None = None, form: bool = False) -> tuple[int, dict[str, str], Any]:
    if form:
        data, content_type = urllib.parse.urlencode(body).encode(), "application/x-www-form-urlencoded"
    else:
        data, content_type = json.dumps(body).encode(), "application/json"
    headers = {"Content-Type": content_type} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"null")


def assertion(fake: FakeFcm, *, private_key: str | None = None, **claims: Any) -> str:
    info = fake.service_account_info()
    signer = crypt.RSASigner.from_string(private_key or info["private_key"], info["private_key_id"])
    now = int(time.time())
    payload = {"iss": info["client_email"], "aud": GOOGLE_TOKEN_AUDIENCE, "scope": SCOPE, "iat": now, "exp": now + 3600}
    return jwt.encode(signer, payload | claims).decode()


def grant(fake: FakeFcm, signed: str) -> tuple[int, dict[str, str], Any]:
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": signed}
    return call(f"{fake.url}/token", form, form=True)


def access_token(fake: FakeFcm) -> str:
    return str(grant(fake, assertion(fake))[2]["access_token"])


def other_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_a_signed_assertion_gets_a_bearer_token(fake: FakeFcm) -> None:
    status, _, body = grant(fake, assertion(fake))

    assert status == 200
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["access_token"]


@pytest.mark.parametrize(
    ("tamper", "description"),
    [
        ({"private_key": "other"}, "Invalid JWT Signature."),
        ({"iss": "someone@else.iam.gserviceaccount.com"}, "wrong issuer or audience"),
        ({"aud": "https://example.com/token"}, "wrong issuer or audience"),
        ({"exp": int(time.time()) - 600, "iat": int(time.time()) - 4200}, "reasonable timeframe"),
        ({"scope": "https://www.googleapis.com/auth/userinfo.email"}, "no scope"),
    ],
)
def test_the_token_endpoint_refuses_bad_assertions(fake: FakeFcm, tamper: dict[str, Any], description: str) -> None:
    if tamper.get("private_key") == "other":
        tamper = {"private_key": other_private_key()}

    status, _, body = grant(fake, assertion(fake, **tamper))

    assert status == 400
    assert body["error"] == "invalid_grant" and description in body["error_description"]


def test_the_token_endpoint_refuses_garbage_and_other_grants(fake: FakeFcm) -> None:
    assert grant(fake, "not.a.jwt")[2]["error"] == "invalid_grant"
    status, _, body = call(f"{fake.url}/token", {"grant_type": "client_credentials"}, form=True)
    assert (status, body["error"]) == (400, "unsupported_grant_type")


def test_sending_needs_a_token_the_fake_issued(fake: FakeFcm) -> None:
    status, _, body = call(f"{fake.url}{SEND}", {"message": {"token": "t"}}, token="ya29.made-up")

    assert status == 401
    assert body["error"]["status"] == "UNAUTHENTICATED" and body["error"]["code"] == 401


def test_sending_to_another_project_is_denied(fake: FakeFcm) -> None:
    url = f"{fake.url}/v1/projects/someone-else/messages:send"

    status, _, body = call(url, {"message": {"token": "t"}}, token=access_token(fake))

    assert (status, body["error"]["status"]) == (403, "PERMISSION_DENIED")


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"token": "t", "topic": "news"}, "message"),
        ({}, "message"),
        ({"token": "t", "data": {"count": 3}}, "message.data"),
        ({"token": "t", "data": {"blob": "x" * 4100}}, "message"),
        ({"token": "t", "android": {"ttl": "1 day"}}, "message.android.ttl"),
        ({"token": "t", "apns": {"headers": {"apns-collapse-id": "k" * 65}}}, "message.apns.headers"),
    ],
)
def test_invalid_messages_get_invalid_argument(fake: FakeFcm, message: dict[str, Any], field: str) -> None:
    status, _, body = call(f"{fake.url}{SEND}", {"message": message}, token=access_token(fake))

    assert (status, body["error"]["status"]) == (400, "INVALID_ARGUMENT")
    fcm_error, bad_request = body["error"]["details"]
    assert fcm_error == {
        "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
        "errorCode": "INVALID_ARGUMENT",
    }
    assert bad_request["fieldViolations"][0]["field"] == field


def test_a_valid_message_is_named_and_validate_only_is_not_delivered(fake: FakeFcm) -> None:
    token = access_token(fake)

    sent = call(f"{fake.url}{SEND}", {"message": {"fid": "fid-1", "data": {"a": "b"}}}, token=token)
    dry = call(f"{fake.url}{SEND}", {"message": {"token": "t"}, "validate_only": True}, token=token)

    assert sent[0] == 200 and sent[2]["name"].startswith("projects/nudge-demo/messages/0:")
    assert dry[2] == {"name": "projects/nudge-demo/messages/fake_message_id"}


@pytest.fixture(scope="module")
def app(fake: FakeFcm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[firebase_admin.App]:
    account = fake.write_service_account(tmp_path_factory.mktemp("fcm") / "service-account.json")
    certificate = credentials.Certificate(str(account))
    app = firebase_admin.initialize_app(certificate, {"httpTimeout": 5}, name=f"fake-fcm-test-{uuid.uuid4().hex}")
    point_messaging_at(app, fake.url, DEFAULT_RETRIES.new(status=0))  # no SDK retries: one request each
    skip_regional_access_boundary_lookup(certificate.get_credential())
    yield app
    firebase_admin.delete_app(app)


def message(token: str = "t-1") -> messaging.Message:
    built = messaging.Message(notification=messaging.Notification(title="t", body="b"))
    built.token = token
    return built


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("UNREGISTERED", messaging.UnregisteredError),
        ("QUOTA_EXCEEDED", messaging.QuotaExceededError),
        ("UNAVAILABLE", exceptions.UnavailableError),
        ("INTERNAL", exceptions.InternalError),
        ("INVALID_ARGUMENT", exceptions.InvalidArgumentError),
        ("SENDER_ID_MISMATCH", messaging.SenderIdMismatchError),
        ("THIRD_PARTY_AUTH_ERROR", messaging.ThirdPartyAuthError),
    ],
)
def test_firebase_admin_parses_each_scripted_error_into_its_type(
    fake: FakeFcm, app: firebase_admin.App, code: Any, expected: type[Exception]
) -> None:
    # google-auth answers a 401 by refreshing the token and trying again, twice: script all three.
    fake.fail_next(code, count=3 if code == "THIRD_PARTY_AUTH_ERROR" else 1, retry_after=5)

    with pytest.raises(expected) as raised:
        messaging.send(message(), app=app)

    assert isinstance(raised.value, exceptions.FirebaseError)
    assert raised.value.http_response.headers["Retry-After"] == "5"


def test_unregistered_tokens_stay_unregistered(fake: FakeFcm, app: firebase_admin.App) -> None:
    fake.unregister("t-gone")

    batch = messaging.send_each([message("t-ok"), message("t-gone"), message("t-gone")], app=app)

    assert [r.success for r in batch.responses] == [True, False, False]
    assert all(isinstance(r.exception, messaging.UnregisteredError) for r in batch.responses[1:])


def test_requests_are_served_over_http_with_parsed_bodies(fake: FakeFcm, app: firebase_admin.App) -> None:
    messaging.send(message(), app=app)

    _, _, records = call(f"{fake.url}/_fake/requests?path=/v1/", None)

    assert [(r["path"], r["status"]) for r in records] == [(SEND, 200)]
    assert records[0]["body"]["message"]["token"] == "t-1"
    headers = {name.lower(): value for name, value in records[0]["headers"].items()}
    assert headers["authorization"].startswith("Bearer ya29.fake-")


def test_the_service_account_points_google_auth_at_the_fake(fake: FakeFcm, tmp_path: Path) -> None:
    path = fake.write_service_account(tmp_path / "nested" / "account.json")
    info = json.loads(path.read_text())

    assert info["token_uri"] == f"{fake.url}/token"
    assert info["type"] == "service_account" and info["project_id"] == "nudge-demo"
    assert path.stat().st_mode & 0o777 == 0o600
