"""The one place that turns settings into SDK-backed senders; flows call this, never the SDKs."""

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from engine.providers.errors import ConfigurationError
from engine.providers.fcm_push import FcmPushSender
from engine.providers.messages import EmailSender, PushSender
from engine.providers.sendgrid_email import SendGridEmailSender
from engine.providers.settings import FcmSettings, SendGridSettings, env_name


@dataclass(frozen=True, slots=True)
class Senders:
    """The senders a run uses, and what must happen when it is done with them."""

    email: EmailSender
    push: PushSender
    on_close: tuple[Callable[[], None], ...] = ()

    def close(self) -> None:
        """Release thread pools and SDK apps."""
        for close in self.on_close:
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def build_senders(sendgrid: SendGridSettings, fcm: FcmSettings) -> Senders:
    """Build both senders, or raise ConfigurationError naming the environment variable to set."""
    if sendgrid.api_key is None:
        raise _missing(env_name(SendGridSettings, "api_key"), "a SendGrid API key")
    account_variable = env_name(FcmSettings, "service_account_file")
    if fcm.service_account_file is None:
        raise _missing(account_variable, "the path of a Firebase service-account JSON file")
    if not fcm.service_account_file.is_file():
        raise ConfigurationError(
            "invalid_setting", f"{account_variable}={fcm.service_account_file} is not a readable file"
        )
    try:
        push = FcmPushSender(fcm.service_account_file, endpoint=fcm.endpoint, timeout=fcm.timeout)
    except ValueError as exc:
        raise ConfigurationError(
            "invalid_setting", f"{account_variable}={fcm.service_account_file} is not a usable service account: {exc}"
        ) from exc
    email = SendGridEmailSender(
        api_key=sendgrid.api_key.get_secret_value(),
        host=sendgrid.host,
        from_email=sendgrid.from_email,
        from_name=sendgrid.from_name,
        timeout=sendgrid.timeout,
        sandbox_mode=sendgrid.sandbox_mode,
    )
    return Senders(email=email, push=push, on_close=(email.close, push.close))


def _missing(variable: str, what: str) -> ConfigurationError:
    return ConfigurationError("missing_setting", f"{variable} is not set: it must hold {what}")
