"""A SendGridEmailSender pointed at a fake SendGrid over HTTP, shared by the SendGrid provider tests.

Import `fake_sendgrid` and `sendgrid_sender` into a test module: they are the fixtures `fake` and `sender` there
(registered under those names, so the imports do not shadow the test functions' arguments). `make_sender` builds
a sender with other options.
"""

from collections.abc import Iterator

import pytest

from engine.fakes import FakeSendGrid
from engine.providers.sendgrid_email import SendGridEmailSender


@pytest.fixture(name="fake")
def fake_sendgrid() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as server:
        yield server


def make_sender(fake: FakeSendGrid, **overrides: object) -> SendGridEmailSender:
    options: dict[str, object] = {
        "api_key": fake.api_key,
        "host": fake.url,
        "from_email": "hello@example.com",
        "from_name": "Nudge",
        "timeout": 5.0,
    } | overrides
    return SendGridEmailSender(**options)  # type: ignore[arg-type]


@pytest.fixture(name="sender")
def sendgrid_sender(fake: FakeSendGrid) -> Iterator[SendGridEmailSender]:
    sender = make_sender(fake)
    yield sender
    sender.close()
