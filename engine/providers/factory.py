"""The one place that turns settings into the SDK-backed senders of the built-in channels; flows never build SDK
clients inline (`engine.channels.senders.build_channel_senders` builds every channel's from the environment)."""

from engine.channels.senders import Senders
from engine.providers.errors import ConfigurationError
from engine.providers.fcm_pool import FcmPushPool
from engine.providers.fcm_push import FcmPushSender
from engine.providers.sendgrid_email import SendGridEmailSender
from engine.providers.settings import FcmSettings, SendGridSettings, env_name


def build_senders(sendgrid: SendGridSettings, fcm: FcmSettings) -> Senders:
    """The email and push senders from explicit settings (the environment's, or a fake's in tests)."""
    email = build_email_sender(sendgrid)
    try:
        push = build_push_sender(fcm)
    except BaseException:
        email.close()
        raise
    return Senders({"email": email, "push": push})


def build_email_sender(sendgrid: SendGridSettings) -> SendGridEmailSender:
    """The SendGrid sender, or ConfigurationError naming the environment variable to set."""
    if sendgrid.api_key is None:
        raise _missing(env_name(SendGridSettings, "api_key"), "a SendGrid API key")
    return SendGridEmailSender(
        api_key=sendgrid.api_key.get_secret_value(),
        host=sendgrid.host,
        from_email=sendgrid.from_email,
        from_name=sendgrid.from_name,
        timeout=sendgrid.timeout,
        sandbox_mode=sendgrid.sandbox_mode,
    )


def build_push_sender(fcm: FcmSettings) -> FcmPushSender | FcmPushPool:
    """The FCM sender, or ConfigurationError naming the environment variable to set or fix."""
    account_variable = env_name(FcmSettings, "service_account_file")
    if fcm.service_account_file is None:
        raise _missing(account_variable, "the path of a Firebase service-account JSON file")
    if not fcm.service_account_file.is_file():
        raise ConfigurationError(
            "invalid_setting", f"{account_variable}={fcm.service_account_file} is not a readable file"
        )
    try:
        if fcm.processes > 1:
            return FcmPushPool(fcm.service_account_file, fcm.processes, endpoint=fcm.endpoint, timeout=fcm.timeout)
        return FcmPushSender(fcm.service_account_file, endpoint=fcm.endpoint, timeout=fcm.timeout)
    except ValueError as exc:
        raise ConfigurationError(
            "invalid_setting", f"{account_variable}={fcm.service_account_file} is not a usable service account: {exc}"
        ) from exc


def _missing(variable: str, what: str) -> ConfigurationError:
    return ConfigurationError("missing_setting", f"{variable} is not set: it must hold {what}")
