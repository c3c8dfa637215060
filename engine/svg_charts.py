"""The geometry of inline SVG charts: shapes, plotting areas, axes, ticks and colours, with nothing of a report.

A chart is data (a `Chart` of `Shape`s) that a template writes out as SVG, so what is drawn can be tested as
numbers and the page needs no script. Coordinates are formatted to 0.1 here, once, so equal charts are equal
bytes. The reports (`engine/report_html.py`) decide what each chart plots; this module only places it.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import cycle

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")

_WIDTH = 720
_MAX_X_LABELS = 12
_LABEL_CHARS = 22


@dataclass(frozen=True)
class Shape:
    """One SVG element: tag, CSS class, formatted attributes, text and a tooltip (the browser shows `<title>`)."""

    tag: str
    css: str
    attributes: tuple[tuple[str, str], ...]
    text: str = ""
    tooltip: str = ""


@dataclass(frozen=True)
class Chart:
    """An inline SVG chart: its size, what a screen reader says of it, its shapes and its legend."""

    width: int
    height: int
    label: str
    shapes: tuple[Shape, ...]
    legend: tuple[tuple[str, str], ...] = ()  # (name, colour)


@dataclass(frozen=True)
class Plot:
    """The plotting area of a chart: the SVG's size less margins that hold the axes' labels."""

    height: int
    left: int
    top: int = 14
    bottom: int = 30
    right: int = 24
    width: int = _WIDTH

    @property
    def inner_width(self) -> float:
        return self.width - self.left - self.right

    @property
    def inner_height(self) -> float:
        return self.height - self.top - self.bottom

    @property
    def base(self) -> float:
        """The y of the horizontal axis."""
        return self.height - self.bottom


def shape(tag: str, css: str, *, text: str = "", tooltip: str = "", **attributes: float | int | str) -> Shape:
    """A Shape with attribute names in SVG's spelling (data_value -> data-value) and coordinates to 0.1."""
    formatted = tuple(
        (key.replace("_", "-"), coord(value) if isinstance(value, float) else str(value))
        for key, value in attributes.items()
    )
    return Shape(tag, css, formatted, text, tooltip)


def coord(value: float) -> str:
    """A coordinate to 0.1 of a pixel: finer is invisible, and would make equal charts differ in bytes."""
    return f"{value:.1f}"


def nice_ticks(top: float, *, whole: bool) -> list[float]:
    """Tick values from 0 to at least `top` (> 0 assumed, else 0..1) in about four steps of 1, 2, 2.5 or 5 x 10^k."""
    if not top > 0:
        return [0.0, 1.0]
    raw = top / 4
    power = 10.0 ** math.floor(math.log10(raw))
    steps = [m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if not whole or (m * power).is_integer()]
    step = max(next(s for s in steps if s >= raw), 1.0 if whole else 0.0)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def y_axis(plot: Plot, ticks: Sequence[float], scale: float) -> list[Shape]:
    """Horizontal grid lines with counts ("1,000") beside them, for charts whose bars or lines rise from the base."""
    shapes = []
    for tick in ticks:
        y = plot.base - tick * scale
        shapes += [
            shape("line", "grid", x1=plot.left, y1=y, x2=plot.width - plot.right, y2=y),
            shape("text", "tick-label y", text=f"{tick:,.0f}", x=plot.left - 6, y=y + 4),
        ]
    return shapes


def x_axis(plot: Plot, ticks: Sequence[float], scale: float) -> list[Shape]:
    """Vertical grid lines with shares ("25%") under them, with as few decimals as tell the ticks apart."""
    shapes = []
    decimals = next((d for d in range(3) if all(math.isclose(round(t * 100, d), t * 100) for t in ticks)), 3)
    for tick in ticks:
        x = plot.left + tick * scale
        shapes += [
            shape("line", "grid", x1=x, y1=plot.top, x2=x, y2=plot.base),
            shape("text", "tick-label x", text=f"{tick:.{decimals}%}", x=x, y=plot.base + 18),
        ]
    return shapes


def x_labels(plot: Plot, labels: Sequence[str], slot: float) -> list[Shape]:
    """Labels under the slots, thinned to at most a dozen so they never overlap."""
    every = math.ceil(len(labels) / _MAX_X_LABELS)
    return [
        shape("text", "tick-label x", text=label, x=plot.left + slot * (i + 0.5), y=plot.base + 18)
        for i, label in enumerate(labels)
        if i % every == 0
    ]


def assign_colours(names: Sequence[str], fixed: Mapping[str, str]) -> dict[str, str]:
    """Each name's fixed colour if it has one, else the palette's next: a new series still gets a colour."""
    spare = cycle(PALETTE)
    return {name: fixed[name] if name in fixed else next(spare) for name in names}


def short_label(name: str) -> str:
    """A name cut to fit the left margin, with an ellipsis; the full name goes in the tooltip."""
    return name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + "…"
