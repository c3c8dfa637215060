"""How dispatch retries, waits, and treats a send whose outcome nobody recorded.

Time comes from a `Clock` the caller hands in: the Prefect task builds a `WallClock`, tests a clock they move.

Retries. A retryable outcome makes its row `retryable` with a `next_attempt_at`: now plus the provider's own
wait (SendGrid's X-RateLimit-Reset, a Retry-After, FCM's at-least-60 s for QUOTA_EXCEEDED) when it gave one,
else `backoff_seconds * 2 ** (attempts - 1)`, capped at `max_backoff_seconds`. No claim takes the row before
that time. A provider's wait that is about the whole account, not one message (everything except FCM's
per-target QUOTA_EXCEEDED), also pauses the channel (`ProviderPause`): nothing at all goes out on it before the
wait is over, in this run or any other. A run sleeps through waits of up to `max_wait_seconds` and otherwise
stops that channel, leaving the rows for a later run. At `max_attempts` requests a retryable row fails.

In doubt. A row is marked `sending` (in one commit per wave of at most `wave_size` concurrent requests) right
before its request, so after a crash only the rows of the wave in flight have an unknown outcome; rows still
`claimed` were never sent and any later dispatcher simply sends them. An outcome is also unknown after a
timeout (`AMBIGUOUS_CODES`): the provider may have accepted. Neither SendGrid nor FCM has an idempotency key,
so what happens to such a row is a setting, `in_doubt`:

- `resend` (default): send it again and count it as a possible duplicate (`possible_duplicates` in the run's
  counts and summary). A row left `sending` is taken only once its mark is `in_doubt_after_seconds` old, so a
  dispatcher still waiting for its provider is never overtaken. A crash between a provider's 2xx and the ledger
  update therefore duplicates exactly the messages of the one wave in flight, and FCM's collapse keys make a
  duplicate push replace rather than stack. This default is what "lose nothing" needs.
- `hold`: never send it again automatically. It stays `sending`, is counted as in doubt in every run's
  summary, and waits for an operator (who sets it `accepted`, or back to `retryable` to send it again).

The setting applies when the outcome is recorded (a timeout) or when a stale mark is found (a crash).
A `connection` outcome (nothing answered) is retried as usual: errors.py does not yet tell a refused connection
(nothing sent) from one reset after the request was written (in doubt).
"""

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import Field, PositiveInt
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from engine.channels.registry import channel as channel_named
from engine.channels.registry import channels
from engine.providers.messages import Outcome

InDoubtPolicy = Literal["resend", "hold"]

# Written as a row's error_code when a dispatcher takes over a `sending` mark that never got an outcome.
OUTCOME_UNKNOWN = "outcome_unknown"
# Outcomes after which the provider may or may not have accepted the message.
AMBIGUOUS_CODES = frozenset({"timeout", OUTCOME_UNKNOWN})
# Codes of errors.py's ConfigurationError: our credentials or project are wrong, not the message. The channel
# stops for the run and the message stays sendable, its attempt not counted.
CONFIGURATION_CODES = frozenset(
    {
        "SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND",
        "oauth_refused", "sendgrid_401", "sendgrid_403",
    }
)  # fmt: skip
# Provider waits about one target (FCM counts quota per device and topic), not the whole account.
PER_MESSAGE_WAIT_CODES = frozenset({"QUOTA_EXCEEDED"})


class Clock(Protocol):
    """The dispatch clock: what time it is, and how to let time pass."""

    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


class WallClock:
    """Real time, for the task edge; the engine itself never reads the time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class DispatchPolicy:
    """How one channel is dispatched; see the module docstring for what each knob means."""

    clock: Clock
    in_doubt: InDoubtPolicy = "resend"
    batch_size: int = 500  # rows claimed and rendered together
    wave_size: int = 8  # messages marked `sending` together and sent concurrently
    max_attempts: int = 3  # provider requests per message, across runs
    max_wait_seconds: float = 10.0  # the longest wait a run sleeps through
    backoff_seconds: float = 2.0  # the first retry's wait when the provider named none; doubles per attempt
    max_backoff_seconds: float = 600.0
    in_doubt_after_seconds: float = 300.0  # longer than any provider call (timeouts times SDK retries)

    def retry_delay(self, outcome: Outcome, attempts: int) -> float:
        """Seconds before a retryable message may go again, after `attempts` requests."""
        if outcome.retry_after is not None:
            return max(outcome.retry_after, 0.0)
        return min(self.backoff_seconds * 2 ** max(attempts - 1, 0), self.max_backoff_seconds)

    def next_attempt_at(self, outcome: Outcome, attempts: int, now: datetime) -> datetime:
        return now + timedelta(seconds=self.retry_delay(outcome, attempts))


def pauses_channel(outcome: Outcome) -> bool:
    """Whether this outcome's wait applies to every message of the channel, not just this one."""
    return (
        outcome.status == "retryable"
        and outcome.retry_after is not None
        and outcome.error_code not in PER_MESSAGE_WAIT_CODES
    )


def is_configuration_error(outcome: Outcome) -> bool:
    return outcome.status == "failed" and outcome.error_code in CONFIGURATION_CODES


class DispatchSettings(BaseSettings):
    """Dispatch knobs from the environment: NUDGE_DISPATCH_IN_DOUBT=hold, NUDGE_DISPATCH_MAX_ATTEMPTS=5, ...

    A channel's wave size is its own default (`Channel.wave_size`: 8 emails, 100 pushes) unless
    NUDGE_DISPATCH_<CHANNEL>_WAVE_SIZE sets it, for every registered channel alike.
    """

    model_config = SettingsConfigDict(env_prefix="NUDGE_DISPATCH_", extra="ignore")

    in_doubt: InDoubtPolicy = "resend"
    max_attempts: int = Field(default=3, ge=1)
    max_wait_seconds: float = Field(default=10.0, ge=0)
    backoff_seconds: float = Field(default=2.0, ge=0)
    in_doubt_after_seconds: float = Field(default=300.0, gt=0)
    batch_size: int = Field(default=500, ge=1)
    wave_sizes: dict[str, PositiveInt] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _WaveSizes(settings_cls), env_settings, dotenv_settings, file_secret_settings

    def policy(self, channel: str, clock: Clock) -> DispatchPolicy:
        """The policy for one channel, on `clock`."""
        return DispatchPolicy(
            clock=clock,
            in_doubt=self.in_doubt,
            batch_size=self.batch_size,
            wave_size=self.wave_sizes.get(channel, channel_named(channel).wave_size),
            max_attempts=self.max_attempts,
            max_wait_seconds=self.max_wait_seconds,
            backoff_seconds=self.backoff_seconds,
            in_doubt_after_seconds=self.in_doubt_after_seconds,
        )


class _WaveSizes(PydanticBaseSettingsSource):
    """`wave_sizes` from NUDGE_DISPATCH_<CHANNEL>_WAVE_SIZE, one variable per registered channel."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is read in __call__

    def __call__(self) -> dict[str, Any]:
        sizes = {
            name: os.environ[variable]
            for name in channels()
            if (variable := f"NUDGE_DISPATCH_{name.upper()}_WAVE_SIZE") in os.environ
        }
        return {"wave_sizes": sizes} if sizes else {}
