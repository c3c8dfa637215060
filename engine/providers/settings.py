"""Provider settings from the environment, one class per provider, each with its own prefix.

Secrets are `SecretStr` so they stay out of logs and reprs. A placeholder secret copied from an example
file fails here, at start-up, rather than as a 401 on the first send of a campaign.
"""

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDERS = frozenset(
    {
        "changeme", "change-me", "change_me", "xxx", "todo", "tbd", "secret", "password", "placeholder",
        "dummy", "none", "null", "apikey", "api-key", "api_key", "your-api-key", "your_api_key",
    }
)  # fmt: skip


def refuse_placeholder_secret(value: SecretStr | None) -> SecretStr | None:
    """Let an absent secret through (the factory names it when needed) but not an empty or fake one."""
    if value is None:
        return None
    secret = value.get_secret_value().strip()
    if not secret:
        raise ValueError("is empty")
    lowered = secret.lower()
    if lowered in _PLACEHOLDERS or set(lowered) <= {"x", "*", "."} or lowered.startswith("<"):
        raise ValueError("is a placeholder, not a real secret")
    return value


def require_http_url(value: str | None) -> str | None:
    """Accept scheme://host[:port] and drop a trailing slash, which the SDKs would double."""
    if value is None:
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


class SendGridSettings(BaseSettings):
    """SendGrid: NUDGE_SENDGRID_API_KEY, NUDGE_SENDGRID_HOST, NUDGE_SENDGRID_FROM_EMAIL, ..."""

    model_config = SettingsConfigDict(env_prefix="NUDGE_SENDGRID_", extra="ignore")

    api_key: SecretStr | None = None
    host: str = "https://api.sendgrid.com"
    from_email: str = "hello@example.com"
    from_name: str | None = None
    timeout: float = Field(default=10.0, gt=0)
    sandbox_mode: bool = False

    _api_key_is_real = field_validator("api_key")(refuse_placeholder_secret)
    _host_is_url = field_validator("host")(require_http_url)


class FcmSettings(BaseSettings):
    """Firebase Cloud Messaging: NUDGE_FCM_SERVICE_ACCOUNT_FILE, NUDGE_FCM_ENDPOINT, NUDGE_FCM_TIMEOUT,
    NUDGE_FCM_PROCESSES.

    `endpoint` is unset in production (the SDK's fcm.googleapis.com); set it to reach a local fake. `processes`
    above 1 sends each wave from that many worker processes (`engine.providers.fcm_pool`): worth it for large
    sends on a machine with as many free cores, a cost of ~1 s of start-up otherwise.
    """

    model_config = SettingsConfigDict(env_prefix="NUDGE_FCM_", extra="ignore")

    service_account_file: Path | None = None
    endpoint: str | None = None
    timeout: float = Field(default=10.0, gt=0)
    processes: int = Field(default=1, ge=1)

    _endpoint_is_url = field_validator("endpoint")(require_http_url)


def env_name(settings: type[BaseSettings], field: str) -> str:
    """The environment variable that sets `field`, for error messages that say what to fix."""
    return f"{settings.model_config.get('env_prefix', '')}{field}".upper()
