"""Plain-text tables for the benchmark's output: aligned columns, human units, nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """A ratio of wall times (judged against `upper`, inclusive when `inclusive`) and, beside it, of CPU times."""

    name: str
    value: float
    upper: float | None  # None: shown for information, not a target
    shown: str
    inclusive: bool = False
    cpu_value: float | None = None

    @property
    def met(self) -> bool:
        if self.upper is None:
            return True
        return self.value <= self.upper if self.inclusive else self.value < self.upper


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """Rows under headers, columns padded to their widest cell; indexes in `right` are right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(cell).rjust(width) if index in right else str(cell).ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def size(value: float | None) -> str:
    """Bytes in MiB or GiB."""
    if value is None:
        return ""
    if value >= 2**30:
        return f"{value / 2**30:.2f} GiB"
    return f"{value / 2**20:.1f} MiB"


def count(value: int) -> str:
    """A count as 1.23M, 45.6k or 789."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.2f}M"
    if value >= 10_000:
        return f"{value / 1_000:.1f}k"
    return f"{value:,}"


def ratio(value: float) -> str:
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"
