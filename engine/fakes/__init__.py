"""Loopback fakes of SendGrid and FCM that speak the providers' wire formats to the real SDKs."""

from engine.fakes.fcm import FakeFcm
from engine.fakes.providers import FakeProviders
from engine.fakes.sendgrid import FakeSendGrid

__all__ = ["FakeFcm", "FakeProviders", "FakeSendGrid"]
