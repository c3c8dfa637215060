"""Seeded fault injection for the fakes: a share of sends rate-limited, failed with a server error, or hung.

The fault for a request depends only on the seed, the request's identity (the send key it carries) and how many
times that identity arrived before; never on arrival order. Concurrent senders therefore meet the same faults
run after run, and a retry of a message draws afresh.
"""

import random
import threading
from collections import Counter
from typing import Literal

Fault = Literal["rate_limited", "unavailable", "hang"]


class Chaos:
    """Which fault, if any, to inject into each send.

    Args:
        seed: the draw's seed.
        rate_limited: share of sends answered with the provider's rate-limit error (SendGrid 429 with
            X-RateLimit-Reset, FCM QUOTA_EXCEEDED with Retry-After), asking for `wait_seconds`.
        unavailable: share answered with a server error (SendGrid 503, FCM UNAVAILABLE with Retry-After).
        hang: share held for `hang_seconds` (past the client's timeout) and then accepted.
    """

    def __init__(
        self,
        seed: int,
        *,
        rate_limited: float = 0.0,
        unavailable: float = 0.0,
        hang: float = 0.0,
        wait_seconds: float = 1.0,
        hang_seconds: float = 1.0,
    ) -> None:
        if min(rate_limited, unavailable, hang) < 0 or rate_limited + unavailable + hang > 1:
            raise ValueError("fault shares must be non-negative and add up to at most 1")
        self.seed = seed
        self.wait_seconds = wait_seconds
        self.hang_seconds = hang_seconds
        self._bounds: list[tuple[float, Fault]] = [
            (rate_limited, "rate_limited"),
            (rate_limited + unavailable, "unavailable"),
            (rate_limited + unavailable + hang, "hang"),
        ]
        self._seen: Counter[str] = Counter()
        self._injected: list[tuple[str, int, Fault]] = []
        self._lock = threading.Lock()

    def fault_for(self, identity: str) -> Fault | None:
        """The fault for this arrival of `identity`, or None to answer normally."""
        with self._lock:
            arrival = self._seen[identity]
            self._seen[identity] += 1
        draw = random.Random(f"{self.seed}:{identity}:{arrival}").random()
        fault = next((fault for bound, fault in self._bounds if draw < bound), None)
        if fault is not None:
            with self._lock:
                self._injected.append((identity, arrival, fault))
        return fault

    def injected(self) -> list[tuple[str, int, Fault]]:
        """(identity, arrival, fault) for every fault injected so far."""
        with self._lock:
            return list(self._injected)
