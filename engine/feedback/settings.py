"""The webhook receiver's settings: NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY.

The key is SendGrid's verification key (Mail Settings > Signed Event Webhook), a base64 DER public key. It is
not a secret, but a placeholder or a mangled paste would make every request look forged: refuse it at start-up.
"""

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.feedback.signature import load_public_key
from engine.providers.settings import refuse_placeholder_secret


class WebhookSettings(BaseSettings):
    """SendGrid Event Webhook: NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY (required)."""

    model_config = SettingsConfigDict(env_prefix="NUDGE_SENDGRID_WEBHOOK_", extra="ignore")

    public_key: str

    @field_validator("public_key")
    @classmethod
    def _is_a_p256_key(cls, value: str) -> str:
        value = value.strip()
        refuse_placeholder_secret(SecretStr(value))
        load_public_key(value)
        return value
