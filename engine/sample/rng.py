"""Counter-based random numbers as Polars expressions (SplitMix64), so generation needs no numpy.

Every draw is a pure function of (seed, stream, keys): the same user on the same day gets the same number
whether that day is generated alone or inside a 90-day run. That makes day-by-day chunked generation
deterministic byte for byte, lets chunks run in any order, and keeps streams independent (adding a new kind of
draw never shifts the numbers of an existing one). The bits are wrapping integer arithmetic, identical on any
Polars version; the files' bytes are only promised for one version, since writers change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import polars as pl

_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_TWO_POW_53 = float(1 << 53)


def _u64(value: int) -> pl.Expr:
    return pl.lit(value, dtype=pl.UInt64)


def _mix(x: pl.Expr) -> pl.Expr:
    """SplitMix64's finalizer; `// 2**k` is a logical right shift on UInt64."""
    x = x.xor(x // _u64(1 << 30)) * _u64(_M1)
    x = x.xor(x // _u64(1 << 27)) * _u64(_M2)
    return x.xor(x // _u64(1 << 31))


def _constant(label: str) -> int:
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "little")


def bits(seed: int, stream: str, *keys: pl.Expr) -> pl.Expr:
    """64 random bits for each row, determined by the seed, the stream name and the integer keys.

    The keys are folded into one counter with distinct odd multipliers and finalized once, as SplitMix64
    finalizes `seed + i * golden`. One finalizer, not one per key, because an expression cannot bind a name:
    each finalizer repeats its input three times, so nesting them grows the plan eightfold per level.
    """
    counter = _u64(_constant(f"{seed}/{stream}"))
    for position, key in enumerate(keys):
        word = key.cast(pl.Int64).cast(pl.UInt64, wrap_numerical=True)
        counter = counter + word * _u64(_constant(f"key/{position}") | 1)
    return _mix(counter * _u64(_GOLDEN))


def uniform(seed: int, stream: str, *keys: pl.Expr) -> pl.Expr:
    """A float in [0, 1) with 53 random bits."""
    return (bits(seed, stream, *keys) // _u64(1 << 11)).cast(pl.Float64) / _TWO_POW_53


def pick(u: pl.Expr, weights: Sequence[float]) -> pl.Expr:
    """The index (UInt32) of a weighted choice, given a uniform draw `u`."""
    total = sum(weights)
    cumulative: list[float] = []
    running = 0.0
    for weight in weights[:-1]:
        running += weight
        cumulative.append(running / total)
    return pl.lit(pl.Series(cumulative, dtype=pl.Float64)).search_sorted(u, side="right").cast(pl.UInt32)


def trials(u: pl.Expr, keep_going: pl.Expr) -> pl.Expr:
    """How many times in a row an event with probability `keep_going` happens (geometric, by inverse CDF).

    With keep_going = m / (m + 1) the mean is m (views in a session); with keep_going = 1 - h it is the
    number of days survived under a daily hazard h (churn).
    """
    return ((1.0 - u).log() / keep_going.log()).floor().cast(pl.Int64)


def lookup(values: Sequence[object] | pl.Series, index: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """`values[index]` for each row; pass a Series when the same table is looked up many times."""
    table = values if isinstance(values, pl.Series) else pl.Series(list(values), dtype=dtype)
    return pl.lit(table).gather(index)
