"""Provider throughput paced by Prefect global concurrency limits used as rate limits, shared by every run.

An operator creates one limit per channel, of the name the channel gives (`Channel.rate_limit`; a plugin names
its own). Its slots decay at the sustained rate the provider allows, so the limit caps messages per second across
all runs and workers; `--limit` is the burst, at least one wave (8 emails, 100 pushes by default):

    prefect gcl create nudge-sendgrid --limit 600 --slot-decay-per-second 100
    prefect gcl create nudge-fcm --limit 1000 --slot-decay-per-second 500

Without such a limit a channel is not paced, and the run log says so once (Prefect's own `rate_limit` would
make an API call and log a warning before every wave instead).
"""

import logging
import math
from typing import Any

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import rate_limit
from prefect.exceptions import ObjectNotFound

from engine.channels.registry import channels
from engine.dispatch import Pace


class RateLimitPacer:
    """`pace(n)` takes `n` slots of a Prefect rate limit before a wave of `n` messages.

    Slots are taken in blocks of about one second of the limit's decay, so most waves cost no API call; a block
    is never larger than the limit itself, which Prefect could never grant.
    """

    def __init__(self, name: str, limit: int, slot_decay_per_second: float) -> None:
        self.name = name
        self._limit = limit
        self._block = max(1, min(limit, math.ceil(slot_decay_per_second)))
        self._credit = 0

    def __call__(self, n: int) -> None:
        while self._credit < n:
            take = min(self._limit, max(self._block, n - self._credit))
            rate_limit(self.name, occupy=take, strict=False)
            self._credit += take
        self._credit -= n


def rate_limits() -> dict[str, str]:
    """The name of the Prefect rate limit of every registered channel (`Channel.rate_limit`)."""
    return {name: spec.rate_limit for name, spec in channels().items()}


def provider_pacers(logger: logging.Logger | logging.LoggerAdapter[Any]) -> dict[str, Pace]:
    """A pacer for each channel whose rate limit exists and is active, read once from the Prefect API."""
    pacers: dict[str, Pace] = {}
    with get_client(sync_client=True) as client:
        for channel, name in rate_limits().items():
            try:
                found = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                logger.info("%s is not paced: no Prefect rate limit named %r (see tasks/pacing.py)", channel, name)
                continue
            if not found.active or found.slot_decay_per_second <= 0:
                logger.warning("%s is not paced: limit %r is inactive or has no slot decay", channel, name)
                continue
            pacers[channel] = RateLimitPacer(name, found.limit, found.slot_decay_per_second)
    return pacers
