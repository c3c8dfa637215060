"""Self-contained HTML reports: the activity over a range of days, and an experiment's analysis, one string each.

A report is opened from a Prefect artifact's link, attached to a ticket or mailed around, often offline and long
after the run, so it carries everything it shows: styles inline, charts drawn here as inline SVG from the numbers,
no script, nothing fetched. Its Content-Security-Policy forbids every load, so a stray reference added to a
template fails loudly in a browser instead of quietly phoning home. Equal inputs give equal bytes (sorted keys,
fixed number formats, no timestamps), so a report can be diffed, and stored by its hash.

The templates (`templates/reports/`) lay out the page; this module decides what it says: the headline, what each
chart plots, the tables and the number formats. `engine/svg_charts.py` places the charts' shapes. Every value
reaches the page through Jinja's autoescaping.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import TypeGuard

import jinja2

from engine.reports import ActivityReport, DayActivity
from engine.settings import REPO_ROOT
from engine.stats.experiment import ArmSummary, Comparison, ExperimentResult
from engine.stats.samples import Interval
from engine.svg_charts import (
    PALETTE,
    Chart,
    Plot,
    assign_colours,
    coord,
    nice_ticks,
    shape,
    short_label,
    x_axis,
    x_labels,
    y_axis,
)

TEMPLATES = REPO_ROOT / "templates" / "reports"

# A message's fates in a run, bottom to top of a day's bar. `planned` and `possible_duplicates` stay out of the
# chart: they count messages that the fates already count (planned ones are sent, held or failed; duplicates are
# sent), and stacking them would double the bar. The tables show them.
FATE_COLOURS = {
    "sent": "#2e7d4f",
    "held": "#d9a21b",
    "skipped": "#9aa3ad",
    "failed": "#c0392b",
    "retryable": "#e67e22",
    "in_doubt": "#8e44ad",
    "configuration_error": "#7b241c",
    "render_failed": "#d35d8f",
}
_NOT_FATES = frozenset({"planned", "possible_duplicates"})
_ROW = 34  # height of one arm in the horizontal charts


def activity_html(report: ActivityReport) -> str:
    """The activity report as one HTML page: a headline, messages by fate and segment sizes per day, then tables."""
    days = report.days
    kinds = sorted({kind for day in days for kind in day.messages})
    segments = sorted({name for day in days for name in day.segments})
    return _render(
        "activity.html.j2",
        title=f"Activity {report.start} to {report.end}",
        headline=_activity_headline(report),
        messages_chart=_message_chart(days) if days else None,
        segments_chart=_segment_chart(days) if segments else None,
        kinds=kinds,
        segments=segments,
        rows=[(_moment(day), day) for day in days],
        totals={kind: sum(day.messages.get(kind, 0) for day in days) for kind in kinds},
    )


def experiment_html(result: ExperimentResult, *, name: str) -> str:
    """The experiment report as one HTML page: a headline verdict, SRM, rates and chances, then every figure.

    Args:
        result: what `analyze` returned; its SRM check names the configured arms, those without users included.
        name: the experiment's name, for the title.
    """
    srm = result.srm
    present = [summary.arm for summary in result.arms]
    absent = [arm for arm in srm.arms if arm not in present]
    rows = [(arm, _summary(result, arm)) for arm in present + absent]
    total = sum(srm.observed)
    level = _level(result.alpha)
    return _render(
        "experiment.html.j2",
        title=f"Experiment {name}",
        headline=_experiment_headline(result),
        level=level,
        result=result,
        arms=rows,
        srm_rows=[
            (arm, observed, expected, observed / total, expected / total)
            for arm, observed, expected in zip(srm.arms, srm.observed, srm.expected, strict=True)
        ],
        conversion_chart=_conversion_chart(rows, control=result.arm(result.control), level=level),
        chance_chart=_chance_chart(result.conversion) if result.conversion else None,
        families=[
            ("Conversion against control", "pp_diff", "pp", result.conversion),
            ("Value per user against control", "value_diff", "value", result.value),
            ("Value per user against control, CUPED-adjusted", "value_diff", "value", result.value_cuped),
        ],
    )


def _message_chart(days: Sequence[DayActivity]) -> Chart:
    """Stacked bars: one per run, one segment per fate of its messages (all channels together)."""
    by_day = [_fates(day.messages) for day in days]
    fates = _fate_order({fate for counts in by_day for fate in counts})
    colours = assign_colours(fates, FATE_COLOURS)
    plot = Plot(height=260, left=64)
    ticks = nice_ticks(max((sum(counts.values()) for counts in by_day), default=0), whole=True)
    scale = plot.inner_height / ticks[-1]
    slot = plot.inner_width / len(days)
    width = min(slot * 0.7, 48.0)
    labels = _day_labels(days)
    shapes = y_axis(plot, ticks, scale)
    for i, (label, counts) in enumerate(zip(labels, by_day, strict=True)):
        x = plot.left + slot * i + (slot - width) / 2
        top = plot.base
        for fate in fates:
            if counts.get(fate, 0) > 0:
                height = counts[fate] * scale
                top -= height
                shapes.append(
                    shape("rect", "bar", tooltip=f"{label}: {counts[fate]:,} {fate}", x=x, y=top, width=width,
                          height=height, fill=colours[fate], data_series=fate, data_value=counts[fate])
                )  # fmt: skip
    shapes += x_labels(plot, labels, slot)
    return Chart(plot.width, plot.height, "Messages per run by fate", tuple(shapes), tuple(colours.items()))


def _segment_chart(days: Sequence[DayActivity]) -> Chart:
    """One line per segment through its size at each run; a run without the segment breaks the line."""
    names = sorted({name for day in days for name in day.segments})
    colours = assign_colours(names, {})
    plot = Plot(height=260, left=64)
    ticks = nice_ticks(max((size for day in days for size in day.segments.values()), default=0), whole=True)
    scale = plot.inner_height / ticks[-1]
    slot = plot.inner_width / len(days)
    labels = _day_labels(days)
    lines, points = [], []
    for name in names:
        runs: list[list[tuple[float, float]]] = [[]]
        for i, (label, day) in enumerate(zip(labels, days, strict=True)):
            if name not in day.segments:
                runs.append([])
                continue
            x, y = plot.left + slot * (i + 0.5), plot.base - day.segments[name] * scale
            runs[-1].append((x, y))
            points.append(
                shape("circle", "point", tooltip=f"{name}, {label}: {day.segments[name]:,}", cx=x, cy=y, r=3.5,
                      fill=colours[name], data_series=name, data_value=day.segments[name])
            )  # fmt: skip
        lines += [
            shape("polyline", "line", points=" ".join(f"{coord(x)},{coord(y)}" for x, y in run), stroke=colours[name])
            for run in runs
            if len(run) > 1
        ]
    shapes = [*y_axis(plot, ticks, scale), *lines, *points, *x_labels(plot, labels, slot)]
    return Chart(plot.width, plot.height, "Segment sizes per run", tuple(shapes), tuple(colours.items()))


def _conversion_chart(arms: Sequence[tuple[str, ArmSummary | None]], *, control: ArmSummary, level: str) -> Chart:
    """Each arm's conversion rate with its confidence interval as whiskers; a dashed line marks control's rate."""
    plot = Plot(height=14 + _ROW * max(len(arms), 1) + 30, left=170, right=80)
    measured = [summary for _, summary in arms if _has_users(summary)]
    top = max((_finite_or(s.conversion_interval.upper, s.conversion_rate) for s in measured), default=0.0)
    ticks = nice_ticks(top if top > 0 else 0.01, whole=False)
    scale = plot.inner_width / ticks[-1]
    shapes = x_axis(plot, ticks, scale)
    if _has_users(control):
        x = plot.left + control.conversion_rate * scale
        shapes.append(shape("line", "reference", x1=x, y1=plot.top, x2=x, y2=plot.base))
    for i, (arm, summary) in enumerate(arms):
        y = plot.top + _ROW * (i + 0.5)
        shapes.append(shape("text", "arm-label", text=short_label(arm), tooltip=arm, x=plot.left - 8, y=y + 4))
        if not _has_users(summary):
            shapes.append(shape("text", "note", text="no users", x=plot.left + 6, y=y + 4))
            continue
        interval = summary.conversion_interval
        tooltip = (f"{arm}: {_format(summary.conversion_rate, 'rate')} ({level} CI {_span(interval, 'rate')}), "
                   f"{summary.conversions:,} of {summary.users:,} users")  # fmt: skip
        right = plot.left + summary.conversion_rate * scale
        if math.isfinite(interval.lower) and math.isfinite(interval.upper):
            low, high = plot.left + interval.lower * scale, plot.left + interval.upper * scale
            right = high
            shapes += [
                shape("line", "whisker", x1=low, y1=y, x2=high, y2=y),
                shape("line", "whisker", x1=low, y1=y - 6, x2=low, y2=y + 6),
                shape("line", "whisker", x1=high, y1=y - 6, x2=high, y2=y + 6),
            ]
        shapes += [
            shape("circle", "point", tooltip=tooltip, cx=plot.left + summary.conversion_rate * scale, cy=y, r=5,
                  fill=PALETTE[0], data_series=arm, data_value=repr(summary.conversion_rate)),
            shape("text", "value-label", text=_format(summary.conversion_rate, "rate"), x=right + 8, y=y + 4),
        ]  # fmt: skip
    return Chart(plot.width, plot.height, f"Conversion rate per arm with {level} confidence intervals", tuple(shapes))


def _chance_chart(comparisons: Sequence[Comparison]) -> Chart:
    """One bar per variant: the posterior chance that it converts better than control; 50% is a coin toss."""
    plot = Plot(height=14 + _ROW * len(comparisons) + 30, left=170, right=80)
    ticks = [0.0, 0.25, 0.5, 0.75, 1.0]
    scale = plot.inner_width
    shapes = x_axis(plot, ticks, scale)
    shapes.append(shape("line", "reference", x1=plot.left + scale / 2, y1=plot.top, x2=plot.left + scale / 2,
                        y2=plot.base))  # fmt: skip
    for i, comparison in enumerate(comparisons):
        y = plot.top + _ROW * i
        chance = comparison.bayes.chance_to_beat_control
        text = _format(chance, "chance")
        shapes.append(
            shape("text", "arm-label", text=short_label(comparison.variant), tooltip=comparison.variant,
                  x=plot.left - 8, y=y + _ROW / 2 + 4)
        )  # fmt: skip
        width = chance * scale if math.isfinite(chance) else 0.0
        shapes += [
            shape("rect", "bar", tooltip=f"{comparison.variant}: {text} chance to beat control", x=plot.left,
                  y=y + 7, width=width, height=_ROW - 14, fill=PALETTE[0], data_series=comparison.variant,
                  data_value=repr(chance)),
            shape("text", "value-label", text=text, x=plot.left + width + 8, y=y + _ROW / 2 + 4),
        ]  # fmt: skip
    return Chart(plot.width, plot.height, "Chance to beat control per variant (conversion)", tuple(shapes))


def _activity_headline(report: ActivityReport) -> str:
    """What the runs did, in one or two sentences: messages by fate, then the largest segment and its change."""
    days = report.days
    if not days:
        return f"No completed live runs from {report.start} to {report.end}: nothing to report."
    totals: dict[str, int] = {}
    channels: dict[str, int] = {}
    for day in days:
        for fate, count in _fates(day.messages).items():
            totals[fate] = totals.get(fate, 0) + count
        for kind, count in day.messages.items():
            channel, _, fate = kind.partition("_")
            if fate == "sent":
                channels[channel] = channels.get(channel, 0) + count
    runs = f"{len(days):,} completed live run{'s' if len(days) != 1 else ''} from {report.start} to {report.end}"
    by_channel = ", ".join(f"{channel} {count:,}" for channel, count in sorted(channels.items()) if count)
    sent = f"sent {totals.get('sent', 0):,} message{'s' if totals.get('sent', 0) != 1 else ''}"
    others = [
        f"{totals[fate]:,} {fate.replace('_', ' ')}" for fate in _fate_order(set(totals) - {"sent"}) if totals[fate]
    ]
    sentence = f"{runs} {sent}" + (f" ({by_channel})" if by_channel else "")
    sentence += f"; {', '.join(others)}." if others else "."
    last = days[-1].segments
    if not last:
        return sentence
    largest = min(last, key=lambda name: (-last[name], name))
    first = next(day.segments[largest] for day in days if largest in day.segments)
    change = last[largest] - first
    trend = f", {change:+,} since the first run" if len(days) > 1 else ""
    return sentence + f" The largest segment at the last run is {largest}, with {last[largest]:,} users{trend}."


def _experiment_headline(result: ExperimentResult) -> list[str]:
    """The verdict per variant on conversion, led by the SRM flag when the split is off (nothing else holds then)."""
    sentences = []
    if result.srm.flagged:
        sentences.append(
            "Sample ratio mismatch: the arms' sizes do not fit the configured split, so the figures below cannot be"
            " trusted."
        )
    users = sum(result.srm.observed)
    sentences.append(f"{users:,} users in {len(result.srm.observed):,} arms.")
    if not result.conversion:
        sentences.append(f"Only the control arm, {result.control}, has users: there is nothing to compare yet.")
    for comparison in result.conversion:
        variant, control = result.arm(comparison.variant), result.arm(result.control)
        p = comparison.p_value_holm
        rates = f"{_format(variant.conversion_rate, 'rate')} against {_format(control.conversion_rate, 'rate')}"
        if not math.isfinite(p):
            verdict = f"{comparison.variant} cannot be compared with {result.control} on conversion yet ({rates})"
        elif p < result.alpha:
            better = "better" if comparison.test.difference > 0 else "worse"
            verdict = f"{comparison.variant} converts {better} than {result.control}: {rates}"
        else:
            verdict = f"{comparison.variant} shows no significant difference from {result.control}: {rates}"
        figures = [f"lift {_format(comparison.lift.lift, 'lift')}"] if math.isfinite(comparison.lift.lift) else []
        if math.isfinite(p):
            figures.append(f"Holm-adjusted p-value {_p(p)}")
        figures.append(f"{_format(comparison.bayes.chance_to_beat_control, 'chance')} chance to beat control")
        sentences.append(f"{verdict}; {', '.join(figures)}.")
    return sentences


def _summary(result: ExperimentResult, arm: str) -> ArmSummary | None:
    return next((summary for summary in result.arms if summary.arm == arm), None)


def _has_users(summary: ArmSummary | None) -> TypeGuard[ArmSummary]:
    return summary is not None and summary.users > 0 and math.isfinite(summary.conversion_rate)


def _fates(messages: Mapping[str, int]) -> dict[str, int]:
    """Messages by fate across channels ("email_sent" + "push_sent" -> "sent"), without the non-fates."""
    fates: dict[str, int] = {}
    for kind, count in messages.items():
        fate = kind.partition("_")[2]
        if fate not in _NOT_FATES:
            fates[fate] = fates.get(fate, 0) + count
    return fates


def _fate_order(fates: Iterable[str]) -> list[str]:
    """Known fates in their chart order, then any other by name: a new outcome shows up rather than vanishing."""
    present = set(fates)
    return [fate for fate in FATE_COLOURS if fate in present] + sorted(present - FATE_COLOURS.keys())


def _day_labels(days: Sequence[DayActivity]) -> list[str]:
    """Short dates ("Oct 1"), with the time when runs are at different times of day."""
    with_time = len({day.as_of.time() for day in days}) > 1
    return [f"{day.as_of:%b} {day.as_of.day}" + (f" {day.as_of:%H:%M}" if with_time else "") for day in days]


def _moment(day: DayActivity) -> str:
    return f"{day.as_of:%Y-%m-%d %H:%M}"


def _finite_or(value: float, fallback: float) -> float:
    return value if math.isfinite(value) else fallback


def _level(alpha: float) -> str:
    """The confidence level as people write it: 95%, 97.5%."""
    return f"{(1 - alpha) * 100:.1f}".removesuffix(".0") + "%"


_FORMATS = {
    "rate": "{:,.2%}",
    "pp": "{:,.2f} pp",
    "pp_diff": "{:+,.2f} pp",
    "value": "{:,.2f}",
    "value_diff": "{:+,.2f}",
    "lift": "{:+,.1%}",
    "chance": "{:.1%}",
}


def _format(value: float | None, unit: str) -> str:
    """A figure in its unit's format ("rate" 11.50%, "pp_diff" +1.50 pp, ...); undefined ones read "n/a"."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if unit == "chance" and not 0.001 <= value <= 0.999:
        return "> 99.9%" if value > 0.999 else "< 0.1%"  # rounding would say 100%: certainty nobody has
    return _FORMATS[unit].format(value * 100 if unit.startswith("pp") else value)


def _span(interval: Interval, unit: str) -> str:
    if not (math.isfinite(interval.lower) and math.isfinite(interval.upper)):
        return "n/a"
    return f"{_format(interval.lower, unit)} to {_format(interval.upper, unit)}"


def _p(p: float) -> str:
    """A p-value to four places, "< 0.0001" below them (not a misleading 0.0000), "n/a" when undefined."""
    if not math.isfinite(p):
        return "n/a"
    return "< 0.0001" if p < 0.0001 else f"{p:.4f}"


@cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(
        count=lambda n: f"{n:,}",
        fmt=_format,
        span=_span,
        p=_p,
    )
    return environment


def _render(template: str, **context: object) -> str:
    return _environment().get_template(template).render(**context)
