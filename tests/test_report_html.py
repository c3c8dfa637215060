"""The HTML reports: self-contained, escaped, deterministic, charts that match their numbers, clean in Chromium.

The browser tests drive Debian's `chromium` over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
JSON messages separated by NUL bytes on the browser's file descriptors 3 and 4), so they need no driver
package and open no port. Without chromium they skip locally and fail in CI (`CI` set), as the PostgreSQL
tests do; `.ci/run` installs it.
"""

import dataclasses
import json
import math
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from scipy import stats

from engine.report_html import activity_html, experiment_html
from engine.reports import ActivityReport, DayActivity
from engine.stats.experiment import ExperimentResult, analyze

HOSTILE = "<script>alert(1)</script>"
NOT_FATES = ("planned", "possible_duplicates")  # counted by the fates already: never a bar of their own


# --- inputs ---------------------------------------------------------------------------------------------------


def day(n: int, messages: dict[str, int], segments: dict[str, int]) -> DayActivity:
    return DayActivity(datetime(2026, 10, n, 6, tzinfo=UTC), messages, segments)


def activity() -> ActivityReport:
    """Four runs: every kind of count, a run that sent nothing, and a hostile segment missing from one run."""
    days = (
        day(1, {"email_planned": 1_300, "email_sent": 1_200, "email_skipped": 100, "push_sent": 40, "push_failed": 2},
            {"loyalists": 20_150, HOSTILE: 3}),
        day(2, {"email_planned": 2_600, "email_sent": 2_400, "email_held": 200, "email_possible_duplicates": 3,
                "push_retryable": 7}, {"loyalists": 20_100}),
        day(3, {}, {"loyalists": 20_000, HOSTILE: 0}),
        day(4, {"email_sent": 3_600, "push_sent": 400, "push_in_doubt": 1, "email_render_failed": 5},
            {"loyalists": 21_450, HOSTILE: 9}),
    )  # fmt: skip
    return ActivityReport(date(2026, 10, 1), date(2026, 10, 4), days)


def experiment_frame(seed: int, counts: dict[str, int], rates: dict[str, float]) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    arm = np.repeat(list(counts), list(counts.values()))
    converted = rng.random(arm.size) < np.array([rates[a] for a in arm])
    value = np.where(converted, rng.gamma(2.0, 10.0, size=arm.size), 0.0)
    return pl.DataFrame(
        {"arm": arm, "converted": converted, "value": value, "pre_value": rng.gamma(2.0, 5.0, arm.size)}
    )


@pytest.fixture(scope="module")
def balanced() -> tuple[pl.DataFrame, ExperimentResult]:
    """Control and two variants in the configured 2:1:1 split, one of them with a hostile name."""
    frame = experiment_frame(
        1, {"control": 6_000, "b": 3_000, HOSTILE: 3_000}, {"control": 0.1, "b": 0.13, HOSTILE: 0.1}
    )
    weights = {"control": 2, "b": 1, HOSTILE: 1}
    return frame, analyze(frame, control="control", expected_weights=weights, draws=20_000)


@pytest.fixture(scope="module")
def missing_arm() -> tuple[pl.DataFrame, ExperimentResult]:
    """Arm `c` is configured but nobody was assigned to it: zero users, a sample ratio mismatch."""
    frame = experiment_frame(2, {"control": 4_000, "b": 4_000}, {"control": 0.1, "b": 0.1})
    return frame, analyze(frame, control="control", expected_weights={"c": 1, "control": 1, "b": 1}, draws=20_000)


# --- reading the HTML -----------------------------------------------------------------------------------------


class Page(HTMLParser):
    """Every start tag with its attributes, the text and the <style> contents of an HTML document."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in_style = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {key: value or "" for key, value in attrs}))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.text).append(data)

    def find(self, tag: str, css: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and (css is None or css in a.get("class", "").split())]

    def svgs(self) -> int:
        return len(self.find("svg"))


def fates(messages: dict[str, int]) -> Counter[str]:
    """The reference: a run's messages by fate, channels summed ("push_sent" -> "sent")."""
    counts: Counter[str] = Counter()
    for kind, count in messages.items():
        fate = kind.split("_", 1)[1]
        if fate not in NOT_FATES and count:
            counts[fate] += count
    return counts


def chromium_or_skip() -> str:
    """The chromium executable; without it, a skip on a laptop and a failure in CI."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium not found: apt-get install chromium (as .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


# --- the HTML itself ------------------------------------------------------------------------------------------


def both(balanced: tuple[pl.DataFrame, ExperimentResult]) -> list[str]:
    return [activity_html(activity()), experiment_html(balanced[1], name=HOSTILE)]


def test_reports_reference_nothing_outside_themselves(balanced) -> None:
    loading = {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster", "data", "background"}
    for html in both(balanced):
        page = Page(html)
        assert "http://" not in html and "https://" not in html
        assert [(tag, sorted(loading & a.keys())) for tag, a in page.elements if loading & a.keys()] == []
        assert not {tag for tag, _ in page.elements} & {"script", "link", "img", "iframe", "object", "embed", "base"}
        assert all("url(" not in style and "@import" not in style for style in page.styles)
        [policy] = [a["content"] for tag, a in page.elements if a.get("http-equiv") == "Content-Security-Policy"]
        assert "default-src 'none'" in policy


def test_hostile_names_show_as_text(balanced) -> None:
    for html in both(balanced):
        page = Page(html)
        assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert not page.find("script")
        assert any(HOSTILE in text for text in page.text)


def test_the_bars_stack_each_runs_messages_by_fate() -> None:
    report = activity()
    page = Page(activity_html(report))
    bars = page.find("rect", "bar")
    expected = Counter((fate, count) for d in report.days for fate, count in fates(d.messages).items())
    assert Counter((b["data-series"], int(b["data-value"])) for b in bars) == expected
    by_slot: dict[float, list[dict[str, str]]] = {}
    for bar in bars:
        by_slot.setdefault(float(bar["x"]), []).append(bar)
    totals = [sum(fates(d.messages).values()) for d in report.days]
    assert len(by_slot) == sum(1 for total in totals if total)  # the run that sent nothing has no bar
    heights = [sum(float(b["height"]) for b in slot) for _, slot in sorted(by_slot.items())]
    nonzero = [total for total in totals if total]
    for height, total in zip(heights, nonzero, strict=True):
        assert height == pytest.approx(max(heights) * total / max(nonzero), abs=0.5)


def test_the_lines_follow_each_segment_and_break_where_it_is_missing() -> None:
    report = activity()
    page = Page(activity_html(report))
    points = page.find("circle", "point")
    expected = Counter((name, size) for d in report.days for name, size in d.segments.items())
    assert Counter((p["data-series"], int(p["data-value"])) for p in points) == expected
    present = {name: [name in d.segments for d in report.days] for d in report.days for name in d.segments}
    runs = sum(
        1
        for flags in present.values()
        for i in range(len(flags))
        if flags[i] and (i == 0 or not flags[i - 1]) and i + 1 < len(flags) and flags[i + 1]
    )  # stretches of two or more consecutive runs with the segment
    assert len(page.find("polyline", "line")) == runs
    ordered = sorted(points, key=lambda p: int(p["data-value"]))
    assert [float(p["cy"]) for p in ordered] == sorted((float(p["cy"]) for p in points), reverse=True)


def test_numbers_carry_thousands_separators_and_the_headline_says_what_happened() -> None:
    report = activity()
    html = activity_html(report)
    sent = sum(count for d in report.days for kind, count in d.messages.items() if kind.endswith("_sent"))
    email = sum(d.messages.get("email_sent", 0) for d in report.days)
    assert f"sent {sent:,} messages (email {email:,}, push {sent - email:,})" in html
    assert f'<th class="num">{email:,}</th>' in html  # the total row
    text = " ".join(Page(html).text)
    assert f"{report.days[-1].segments['loyalists']:,}" in text and "21450" not in text


def test_the_same_input_gives_the_same_bytes(balanced) -> None:
    report = activity()
    shuffled = dataclasses.replace(
        report,
        days=tuple(
            dataclasses.replace(
                d, messages=dict(reversed(d.messages.items())), segments=dict(reversed(d.segments.items()))
            )
            for d in report.days
        ),
    )
    assert activity_html(report) == activity_html(shuffled)
    frame, result = balanced
    again = analyze(frame, control="control", expected_weights={"control": 2, "b": 1, HOSTILE: 1}, draws=20_000)
    assert experiment_html(result, name="x") == experiment_html(again, name="x")


def test_empty_activity_renders() -> None:
    none = activity_html(ActivityReport(date(2026, 10, 1), date(2026, 10, 7), ()))
    assert "No completed live runs from 2026-10-01 to 2026-10-07" in none and Page(none).svgs() == 0
    quiet = Page(activity_html(ActivityReport(date(2026, 10, 1), date(2026, 10, 1), (day(1, {}, {}),))))
    assert quiet.svgs() == 1 and not quiet.find("rect", "bar")  # an empty axis, no segment chart
    assert any("sent 0 messages" in text for text in quiet.text)


def test_the_experiment_charts_show_each_arms_rate_interval_and_chance(balanced) -> None:
    frame, result = balanced
    page = Page(experiment_html(result, name="x"))
    observed = {
        row["arm"]: row["rate"]
        for row in frame.group_by("arm").agg(pl.col("converted").mean().alias("rate")).iter_rows(named=True)
    }
    points = page.find("circle", "point")
    assert {p["data-series"]: float(p["data-value"]) for p in points} == pytest.approx(observed, rel=1e-12)
    whiskers = page.find("line", "whisker")
    assert len(whiskers) == 3 * len(observed)  # the interval and its two caps
    for point, whisker in zip(points, whiskers[::3], strict=True):
        assert float(whisker["x1"]) < float(point["cx"]) < float(whisker["x2"])
    bars = page.find("rect", "bar")
    assert [b["data-series"] for b in bars] == [c.variant for c in result.conversion]
    [left, right] = [float(a["x"]) for a in page.find("text", "x") if a.get("x")][-5::4]  # the 0% and 100% ticks
    for bar, comparison in zip(bars, result.conversion, strict=True):
        assert float(bar["width"]) == pytest.approx(comparison.bayes.chance_to_beat_control * (right - left), abs=0.1)


def test_the_srm_verdict_leads_when_the_split_is_off(balanced, missing_arm) -> None:
    cases = ((balanced, {"control": 2, "b": 1, HOSTILE: 1}), (missing_arm, {"c": 1, "control": 1, "b": 1}))
    for (frame, result), weights in cases:
        counts = dict(frame.group_by("arm").len().iter_rows())
        observed = [counts.get(arm, 0) for arm in weights]
        expected = [sum(observed) * w / sum(weights.values()) for w in weights.values()]
        mismatch = bool(stats.chisquare(observed, expected).pvalue < 0.001)
        html = experiment_html(result, name="x")
        [verdict] = Page(html).find("p", "verdict")
        [headline] = re.findall(r'<p class="headline">(.*?)</p>', html)
        assert ("alert" in verdict["class"].split()) is mismatch
        assert headline.startswith("Sample ratio mismatch") is mismatch
    assert mismatch  # the last case, with an arm nobody was assigned to, is a mismatch


def test_an_arm_without_users_renders(missing_arm) -> None:
    _, result = missing_arm
    html = experiment_html(result, name="x")
    page = Page(html)
    assert len(page.find("circle", "point")) == 2
    assert "no users" in [t.strip() for t in page.text]
    assert '<tr><td>c</td><td class="num">0</td>' in html


def test_only_control_with_users_renders() -> None:
    frame = experiment_frame(3, {"control": 500}, {"control": 0.2})
    result = analyze(frame, control="control", expected_weights={"control": 1, "b": 1}, draws=1_000)
    page = Page(experiment_html(result, name="x"))
    assert page.svgs() == 1 and not page.find("rect", "bar")
    assert any("nothing to compare yet" in t for t in page.text)


def test_the_sample_ratio_table_names_each_count(missing_arm) -> None:
    """In the configured order, the arm nobody was assigned to included, each with its own users."""
    frame, result = missing_arm
    counts = dict(frame.group_by("arm").len().iter_rows())
    [table] = re.findall(r"<h2>Sample ratio</h2>.*?<tbody>(.*?)</tbody>", experiment_html(result, name="x"), re.S)
    rows = re.findall(r'<tr><td>(.*?)</td><td class="num">(.*?)</td>', table)
    assert rows == [(arm, f"{counts.get(arm, 0):,}") for arm in ("c", "control", "b")]


# --- in Chromium ----------------------------------------------------------------------------------------------


class Chromium:
    """A headless Chromium driven over --remote-debugging-pipe; `load` opens a page and reports what went wrong."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser, self._send = os.pipe()
        self._receive, from_browser = os.pipe()
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                 "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]  # fmt: skip
        # The protocol needs the pipes at fds 3 and 4 exactly: a trampoline moves them there and execs the browser.
        self._log = (profile / "chromium.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(to_browser), str(from_browser), executable, *flags],
            pass_fds=(to_browser, from_browser),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._calls = 0
        self._events: list[dict[str, Any]] = []

    def load(self, url: str) -> tuple[list[str], list[str], Any]:
        """Open `url` in a fresh tab: (problems, URLs requested, the value of the DOM probe after the load)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        navigation = self.call("Page.navigate", {"url": url}, session=session)
        self._wait_for("Page.loadEventFired", session)
        probe = self.call("Runtime.evaluate", {"expression": DOM_PROBE, "returnByValue": True}, session=session)
        events = [e for e in self._events if e.get("sessionId") == session]
        self._events = [e for e in self._events if e.get("sessionId") != session]
        self.call("Target.closeTarget", {"targetId": target})
        problems = [f"navigation: {navigation['errorText']}"] if navigation.get("errorText") else []
        return problems + _problems(events), _requests(events), json.loads(probe["result"]["value"])

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> dict[str, Any]:
        self._calls += 1
        message: dict[str, Any] = {"id": self._calls, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 10
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._calls:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply["result"])
            self._events.append(reply)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, EOFError, TimeoutError, RuntimeError):
            self.process.kill()
        self.process.wait(timeout=10)
        os.close(self._send)
        os.close(self._receive)
        self._log.close()

    def _wait_for(self, method: str, session: str) -> None:
        deadline = time.monotonic() + 10
        while not any(e.get("method") == method and e.get("sessionId") == session for e in self._events):
            self._events.append(self._next(deadline))

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if not select.select([self._receive], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("chromium did not answer within 10 s")
            chunk = os.read(self._receive, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return dict(json.loads(message))


# Copies first, so that moving one pipe to fd 3 cannot overwrite the other if it happened to be fd 3; a copy that
# already is fd 3 or 4 makes dup2 a no-op that leaves it close-on-exec, hence set_inheritable.
_TRAMPOLINE = """import os, sys
read, write = os.dup(int(sys.argv[1])), os.dup(int(sys.argv[2]))
for copy, target in ((read, 3), (write, 4)):
    os.dup2(copy, target)
    os.set_inheritable(target, True)
os.execv(sys.argv[3], sys.argv[3:])
"""

# Counted in the browser's DOM: proves the SVG parsed as SVG (not unknown HTML tags) and was laid out.
DOM_PROBE = """JSON.stringify({
  svgs: document.querySelectorAll("svg").length,
  bars: document.querySelectorAll("svg rect.bar").length,
  points: document.querySelectorAll("svg circle.point").length,
  drawn: [...document.querySelectorAll("svg rect.bar, svg circle.point")].every(
    (e) => e instanceof SVGGraphicsElement && e.getBBox().width > 0),
})"""


def _problems(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions, refused or failed loads and HTTP errors, one line each."""
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            problems.append(f"exception: {details.get('exception', {}).get('description') or details['text']}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            problems.append("console." + params["type"] + ": " + " ".join(str(a.get("value")) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            problems.append(f"{params['entry']['source']}: {params['entry']['text']}")
        elif method == "Network.loadingFailed":
            problems.append(f"load failed: {params.get('errorText') or params.get('blockedReason')}")
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            problems.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
    return problems


def _requests(events: list[dict[str, Any]]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory):
    browser = Chromium(chromium_or_skip(), tmp_path_factory.mktemp("chromium"))
    yield browser
    browser.close()


def test_both_reports_load_in_chromium_without_errors_or_requests(chromium: Chromium, balanced, tmp_path) -> None:
    for name, html in zip(("activity", "experiment"), both(balanced), strict=True):
        path = tmp_path / f"{name}.html"
        path.write_text(html, encoding="utf-8")
        problems, requests, dom = chromium.load(path.as_uri())
        page = Page(html)
        assert problems == [], name
        assert requests == [path.as_uri()], name  # the page itself, nothing else
        expected = {
            "svgs": page.svgs(),
            "bars": len(page.find("rect", "bar")),
            "points": len(page.find("circle", "point")),
        }
        assert dom == {**expected, "drawn": True}, name
        assert expected["bars"] > 0 and expected["points"] > 0


BROKEN = {
    "a script error": ("<script>undefined_function()</script>", "undefined_function is not defined"),
    "console.error": ("<script>console.error('boom')</script>", "console.error: boom"),
    "a missing file": ('<img src="missing.png" alt="">', "ERR_FILE_NOT_FOUND"),
    "a load the report's policy refuses": (
        """<meta http-equiv="Content-Security-Policy" content="default-src 'none'"><script>1</script>""",
        "Content Security Policy",
    ),
}


@pytest.mark.parametrize("body,expected", BROKEN.values(), ids=BROKEN.keys())
def test_the_detection_reports_a_broken_page(chromium: Chromium, tmp_path, body: str, expected: str) -> None:
    path = tmp_path / "broken.html"
    path.write_text(f"<!DOCTYPE html><html><head><title>t</title></head><body>{body}</body></html>")
    problems, _, _ = chromium.load(path.as_uri())
    assert any(expected in problem for problem in problems), problems


def test_without_chromium_the_tests_skip_locally_and_fail_in_ci(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        chromium_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        chromium_or_skip()


def test_a_nan_interval_is_not_a_number_on_the_page(missing_arm) -> None:
    _, result = missing_arm
    control = result.arms[0]
    broken = dataclasses.replace(control, value_interval=dataclasses.replace(control.value_interval, lower=math.nan))
    html = experiment_html(dataclasses.replace(result, arms=(broken, *result.arms[1:])), name="x")
    assert not re.search(r"\bnan\b", " ".join(Page(html).text), re.IGNORECASE) and "n/a" in html
