"""Where firebase-admin sends FCM messages, how it retries, and how to keep google-auth off Google's hosts.

firebase-admin has no emulator variable for FCM (Auth, Firestore and Database have one). The send URL
is the class constant `firebase_admin.messaging._MessagingService.FCM_URL`, which each app's messaging
service formats with its project id into its own `_fcm_url` when the service is first created. We
rewrite that per app instance and never touch the class constant, so a sender aimed at a local fake
and one aimed at Google can live in the same process. The attributes are private: this module is the
only place that touches them, and the sender tests fail loudly if an SDK upgrade renames them.
"""

import datetime
import os
from typing import Any

import requests.adapters
import requests.utils
from firebase_admin import App, _http_client, messaging
from google.auth import credentials as google_credentials
from urllib3.util.retry import Retry

FCM_BASE_URL = "https://fcm.googleapis.com"

# The SDK's own policy (4 retries of 500/503 with 0.5 s backoff, one retry of connection and read errors) minus
# what would break the outbox ledger's promises: a resend after a read timeout can duplicate a push the ledger
# never hears of, a quick 5xx resend ignores Retry-After, and urllib3 sleeps in the sending thread on Retry-After
# (up to hours). Those answers come back at once as retryable outcomes; the ledger schedules the retry. Only
# connection errors, where the request never left, are still retried here.
DEFAULT_RETRIES = _http_client.DEFAULT_RETRY_CONFIG.new(
    respect_retry_after_header=False, read=0, status_forcelist=frozenset()
)

# Connections kept per host; the SDK sizes its pool like this for fcm.googleapis.com only, and
# send_each opens one request per message on up to 500 threads.
_POOL_SIZE = 100


def point_messaging_at(app: App, base_url: str, retries: Retry = DEFAULT_RETRIES) -> None:
    """Send this app's FCM requests to `base_url` (scheme, host and port) with the given retry policy.

    Call it right after `firebase_admin.initialize_app`, before the app sends anything.
    """
    service = messaging._get_messaging_service(app)
    base = base_url.rstrip("/")
    service._fcm_url = f"{base}/v1/projects/{app.project_id}/messages:send"
    service._fcm_topic_url = f"{base}/v1/projects/{app.project_id}/registrations"
    adapter = requests.adapters.HTTPAdapter(pool_connections=_POOL_SIZE, pool_maxsize=_POOL_SIZE, max_retries=retries)
    session = service._client.session
    session.mount(base, adapter)
    read_environment_once(session, base)


def read_environment_once(session: requests.Session, base_url: str) -> None:
    """Settle what requests would read from the environment on every request, once, for `base_url`.

    With `trust_env` on (its default), each request scans the whole environment twice for proxy variables,
    looks for a .netrc file and reads REQUESTS_CA_BUNDLE: measured at about 0.4 ms of CPU per push, a fifth of
    what firebase-admin costs per message (bench/dispatch.py). We resolve the proxies (honouring NO_PROXY) and
    the CA bundle when the sender starts, then switch the per-request lookups off. A .netrc is left out on
    purpose: requests would put its password in place of the OAuth bearer token.
    """
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and session.verify is True:
        session.verify = bundle
    session.trust_env = False


def encode(message: messaging.Message) -> dict[str, Any]:
    """The v1 `message` object the SDK will put on the wire for `message`, validated as the SDK does.

    Raises:
        ValueError: what `send_each` would raise for the whole batch on this one message.
    """
    encoded: dict[str, Any] = messaging._MessagingService.encode_message(message)
    return encoded


def skip_regional_access_boundary_lookup(credential: google_credentials.Credentials) -> None:
    """Stop google-auth from asking Google for this credential's regional access boundary.

    google-auth 2.6x starts a background thread after each token refresh that calls
    iamcredentials.googleapis.com to learn where the service account may be used. Against a local
    fake that is a stray request to the internet with a made-up account. The installed google-auth has
    no switch for it: GOOGLE_AUTH_TRUST_BOUNDARY_ENABLED is documented as deprecated and ignored, and
    the lookup is skipped only for non-default universe domains (which also replaces the OAuth token
    exchange with self-signed JWTs, so the fake's token endpoint would never be used), for
    *.rep.googleapis.com URLs, or while a known boundary is fresh. We take the last way: seed the
    credential with the "no restriction" boundary (`NO_OP_TRUST_BOUNDARY_ENCODED_LOCATIONS`) that never
    expires, through `_set_regional_access_boundary`, which google-auth keeps stable because gcloud
    calls it. Requests then carry `x-allowed-locations: 0x0`, which a fake ignores.
    """
    if isinstance(credential, google_credentials.CredentialsWithRegionalAccessBoundary):
        credential._set_regional_access_boundary(
            {
                "encodedLocations": google_credentials.NO_OP_TRUST_BOUNDARY_ENCODED_LOCATIONS,
                "expiry": datetime.datetime.max,
            }
        )
