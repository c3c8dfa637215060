"""Dispatch throughput benchmark (issue 5): rendering alone, then outbox -> fake provider, render included.

    .venv/bin/python -m bench.dispatch [--messages 10k] [--fakes both|in-process|subprocess] [--repeat N]

One run builds N users with carts (`bench/dispatch_workload.py`), one planned email and one planned push each,
and measures, every line on both channels:

1. floor: the context builder (`engine.contexts`) and the shipped templates (`templates/`, rendered by
   `engine.render.TemplateStore` as dispatch renders them), with no outbox and no provider. Messages per CPU
   second of this single-threaded loop are the "per core" render rates;
2. engine: `engine.dispatch.dispatch_channel` over a SQLite outbox (a temporary file) with a sender that
   accepts every message at once: claims, contexts, rendering and ledger commits, without any request;
3. and 4. with the fakes in this process (their threads share our GIL), then in a child process
   (`bench/fake_process.py`, free to use the other core): first the real senders alone (SDK + HTTP + fake) on
   the messages rendered in line 1, in the waves dispatch uses; then `dispatch_channel` end to end, from a
   fresh outbox through the real SDKs to the fakes. Pushes go out from `--push-processes` worker processes
   (`engine.providers.fcm_pool`; 1 sends from this process); CPU figures include every child process.

It prints each line's wall and CPU seconds and rates, where the time of one message goes (floor, the engine's
own work, the SDK and fake), the ratio of dispatch time to render-only time, and the two targets of issue 5.
Every message must end `accepted` in the ledger and be counted by its fake; otherwise the run exits with status
1: a throughput of work not done means nothing. Timings are for reading, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, insert, select

from bench.dispatch_workload import CHANNEL_TEMPLATES, DispatchWorkload, build_workload
from bench.fake_process import FakeProcess, accepted_sends
from bench.report import count, ratio, seconds, table
from bench.timing import Timing, best_of, descendants_total, timed
from bench.workload import REPO_ROOT, parse_count
from engine.channels.registry import channel as channel_named
from engine.contexts import builder_for
from engine.db import connect
from engine.dispatch import DispatchPolicy, dispatch_channel
from engine.fakes import FakeProviders
from engine.providers.factory import Senders, build_senders
from engine.providers.messages import Email, Outcome, Push
from engine.providers.settings import FcmSettings, SendGridSettings
from engine.render import TemplateStore
from models.tables import OutboxMessage

CHANNELS = ("email", "push")
EMAIL_RENDER_TARGET = 7_000  # HTML emails rendered per second per core, autoescape on
DISPATCH_TARGET = 2_000  # messages per second, outbox to fake provider, render included
_OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]
Sizes = tuple[int | None, int | None]  # batch size, wave size; None for the engine's default


class BenchClock:
    """Wall time for dispatch, shaped as the policy's clock (kept here: the bench should not depend on where the
    engine keeps its own)."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def dispatch_policy(channel: str, sizes: Sizes) -> DispatchPolicy:
    """The engine's default policy for `channel` with the sizes asked for; fields the policy lacks are left out.

    Tolerant of the policy's evolution: a `clock` is passed only if the policy has one, and the default wave size
    is the engine's per-channel default when it publishes one.
    """
    batch_size, wave_size = sizes
    names = {f.name for f in dataclasses.fields(DispatchPolicy)}
    wanted: dict[str, Any] = {"clock": BenchClock(), "batch_size": batch_size, "wave_size": wave_size}
    if wave_size is None:
        wanted["wave_size"] = channel_named(channel).wave_size
    return DispatchPolicy(**{name: v for name, v in wanted.items() if name in names and v is not None})


def policy_shown(policy: DispatchPolicy) -> str:
    names = ("batch_size", "wave_size", "in_doubt")
    return ", ".join(f"{name} {getattr(policy, name)}" for name in names if hasattr(policy, name))


def wave_of(policy: DispatchPolicy) -> int:
    """How many messages dispatch hands its sender at once."""
    return int(getattr(policy, "wave_size", getattr(policy, "batch_size", 500)))


@dataclass
class Measured:
    """One line of the report: what ran, how long, on how many messages."""

    what: str
    timing: Timing
    messages: int
    notes: str = ""
    extra_cpu: float = 0.0  # CPU seconds of our child processes: the fakes' when they have one, push workers

    @property
    def per_second(self) -> float:
        return self.messages / self.timing.wall

    @property
    def per_core(self) -> float:
        """Messages per CPU second of this process plus its child processes."""
        return self.messages / (self.timing.cpu + self.extra_cpu)

    @property
    def ms_each(self) -> float:
        return 1000 * self.timing.wall / self.messages


@dataclass
class Section:
    """A numbered group of lines; `problems` lists anything not sent as it should have been."""

    label: str
    lines: dict[str, Measured] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class AcceptAll:
    """A sender that accepts every message at once without any I/O: what dispatch costs by itself."""

    def send(self, messages: Sequence[Email | Push]) -> list[Outcome]:
        return [Outcome(m.send_key, "accepted", provider_message_id=f"bench-{m.send_key}") for m in messages]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", default="10k", help="emails and (as many) pushes: 2k, 10k, 50k or any count")
    parser.add_argument(
        "--fakes",
        choices=("both", "in-process", "subprocess"),
        default="both",
        help="where the provider fakes run (default: both, one after the other)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="rows claimed at once (default: the engine's)")
    parser.add_argument(
        "--wave-size", type=int, default=None, help="messages sent between ledger commits (default: the engine's)"
    )
    parser.add_argument(
        "--push-processes", type=int, default=2, help="processes sending pushes (NUDGE_FCM_PROCESSES; default 2)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of the floor lines; best kept")
    parser.add_argument("--seed", type=int, default=7, help="the workload's seed")
    return parser.parse_args(argv)


def render_floor(
    workload: DispatchWorkload, store: TemplateStore, repeat: int
) -> tuple[Section, dict[str, list[Email | Push]]]:
    """Context building and rendering alone, as dispatch does them, for every message; and the messages."""
    section = Section("1 floor")
    messages: dict[str, list[Email | Push]] = {}
    for channel in CHANNELS:
        claimed = workload.claimed_rows(channel)
        template = CHANNEL_TEMPLATES[channel]
        builder = builder_for(template)

        def contexts(claimed: Any = claimed, builder: Any = builder) -> list[dict[str, Any]]:
            built = builder.build(claimed, workload.users, workload.behaviour)
            merged = claimed.join(built, on="send_key", how="left")
            return [
                {k: v for k, v in row.items() if k not in ("recipient", "attempts")}
                for row in merged.iter_rows(named=True)
            ]

        building, rows = best_of(repeat, contexts)
        render = store.email(template).render if channel == "email" else store.push(template).render
        rendering, rendered = best_of(repeat, lambda render=render, rows=rows: [render(row) for row in rows])
        recipients = claimed.get_column("recipient").to_list()
        messages[channel] = [
            _message(channel, row, r, to) for row, r, to in zip(rows, rendered, recipients, strict=True)
        ]
        n = len(rows)
        kind = "HTML+text emails (autoescape)" if channel == "email" else "pushes"
        section.lines[f"{channel} contexts"] = Measured(f"{channel}: context builder, {count(n)} rows", building, n)
        section.lines[f"{channel} render"] = Measured(f"{channel}: render {count(n)} {kind}", rendering, n)
        together = Timing(building.wall + rendering.wall, building.cpu + rendering.cpu)
        section.lines[f"{channel} floor"] = Measured(f"{channel}: contexts + render", together, n)
    return section, messages


def _message(channel: str, row: dict[str, Any], rendered: Any, recipient: str) -> Email | Push:
    """The message dispatch would hand its sender (send keys marked as the sender-only line's own)."""
    key = f"sender-{row['send_key']}"
    if channel == "email":
        categories = (f"journey:{row['journey']}", f"template:{row['template']}")
        return Email(key, "bench-sender", recipient, rendered.subject, rendered.html, rendered.text, categories)
    data = {"journey": row["journey"], "template": row["template"]}
    return Push(key, "bench-sender", recipient, rendered.title, rendered.body, data)


def fill_outbox(database: Engine, workload: DispatchWorkload) -> None:
    """Insert the planned rows with one executemany per channel (preparation, not measured)."""
    with database.begin() as conn:
        for channel in CHANNELS:
            conn.execute(insert(_OUTBOX), workload.outbox_rows(channel))


def ledger(database: Engine) -> dict[tuple[str, str], int]:
    with database.connect() as conn:
        rows = conn.execute(select(_OUTBOX.c.channel, _OUTBOX.c.status, func.count()).group_by("channel", "status"))
        return {(channel, status): n for channel, status, n in rows}


def dispatch_all(
    section: Section,
    database: Engine,
    workload: DispatchWorkload,
    store: TemplateStore,
    senders: dict[str, Any],
    sizes: Sizes,
    child_cpu: Callable[[], float] = lambda: 0.0,
) -> None:
    """Dispatch every email, then every push, adding a line for each and one for both."""
    n = workload.messages
    for channel in CHANNELS:
        policy = dispatch_policy(channel, sizes)
        before = child_cpu()
        timing, counts = timed(
            lambda channel=channel, policy=policy: dispatch_channel(
                database,
                channel=channel,
                run_id=f"bench-{section.label.split()[-1]}",
                behaviour=workload.behaviour,
                users=workload.users,
                templates=store,
                sender=senders[channel],
                policy=policy,
            )
        )
        shown = counts.as_dict() if hasattr(counts, "as_dict") else counts
        section.lines[channel] = Measured(
            f"{channel}: dispatch_channel, {count(n)} messages",
            timing,
            n,
            f"{policy_shown(policy)}; {shown}",
            child_cpu() - before,
        )
    email, push = section.lines["email"], section.lines["push"]
    both = Timing(email.timing.wall + push.timing.wall, email.timing.cpu + push.timing.cpu)
    section.lines["both"] = Measured("both channels", both, 2 * n, extra_cpu=email.extra_cpu + push.extra_cpu)
    statuses = ledger(database)
    for channel in CHANNELS:
        if statuses.get((channel, "accepted"), 0) != n:
            section.problems.append(f"{section.label}: {channel} ledger is {statuses}, not {n} accepted")


def engine_only(workload: DispatchWorkload, store: TemplateStore, sizes: Sizes, directory: Path) -> Section:
    section = Section("2 engine")
    database = connect(f"sqlite:///{directory / 'outbox.db'}")
    fill_outbox(database, workload)
    accept = AcceptAll()
    dispatch_all(section, database, workload, store, {"email": accept, "push": accept}, sizes)
    for channel in CHANNELS:
        section.lines[channel].what += " to a sender accepting at once (no I/O)"
    return section


@contextmanager
def fakes_in(mode: str, directory: Path) -> Iterator[tuple[dict[str, str], Callable[[], dict[str, int]]]]:
    """The fakes' env and a reader of what they accepted (after exit)."""
    if mode == "in-process":
        with FakeProviders(directory, record=False) as fakes:
            counted: dict[str, int] = {}
            try:
                yield fakes.env(), lambda: counted
            finally:
                counted.update(accepted_sends(fakes))
    else:
        process = FakeProcess(directory)
        with process:
            yield process.env, lambda: process.accepted


def senders_for(env: dict[str, str], push_processes: int) -> Senders:
    sendgrid = SendGridSettings(api_key=env["NUDGE_SENDGRID_API_KEY"], host=env["NUDGE_SENDGRID_HOST"])
    fcm = FcmSettings(
        service_account_file=Path(env["NUDGE_FCM_SERVICE_ACCOUNT_FILE"]),
        endpoint=env["NUDGE_FCM_ENDPOINT"],
        processes=push_processes,
    )
    return build_senders(sendgrid, fcm)


def child_cpu() -> float:
    """User + system CPU seconds used so far by this process's live children (the fakes' process, push workers)."""
    return descendants_total(lambda child: child.cpu_times().user + child.cpu_times().system)


def with_fakes(
    label: str,
    mode: str,
    workload: DispatchWorkload,
    store: TemplateStore,
    rendered: dict[str, list[Email | Push]],
    sizes: Sizes,
    directory: Path,
    push_processes: int,
) -> Section:
    """The real senders alone on pre-rendered messages, then dispatch end to end, with the fakes placed so."""
    section = Section(f"{label} {mode}")
    database = connect(f"sqlite:///{directory / 'outbox.db'}")
    fill_outbox(database, workload)
    n = workload.messages
    with fakes_in(mode, directory / "fakes") as (env, accepted), senders_for(env, push_processes) as senders:
        by_channel: dict[str, Any] = {"email": senders["email"], "push": senders["push"]}
        for channel in CHANNELS:
            wave = wave_of(dispatch_policy(channel, sizes))
            messages = rendered[channel]

            def send_all(sender: Any = by_channel[channel], messages: Any = messages, wave: int = wave) -> list[Any]:
                return [
                    o for start in range(0, len(messages), wave) for o in sender.send(messages[start : start + wave])
                ]

            before = child_cpu()
            timing, outcomes = timed(send_all)
            refused = sum(o.status != "accepted" for o in outcomes)
            if refused:
                section.problems.append(f"{section.label}: the {channel} sender did not get {refused} accepted")
            section.lines[f"{channel} sender"] = Measured(
                f"{channel}: sender alone (SDK + HTTP + fake), waves of {wave}",
                timing,
                len(messages),
                extra_cpu=child_cpu() - before,
            )
        dispatch_all(section, database, workload, store, by_channel, sizes, child_cpu)
    for channel in CHANNELS:
        got = accepted().get(channel)
        if got != 2 * n:
            section.problems.append(
                f"{section.label}: the {channel} fake accepted {got}, not {2 * n} (sender + dispatch)"
            )
    return section


def header(workload: DispatchWorkload, repeat: int, push_processes: int, loads: tuple[float, float]) -> str:
    return (
        f"nudge dispatch benchmark: {workload.messages:,} emails + {workload.messages:,} pushes "
        f"(templates {CHANNEL_TEMPLATES['email']}, {CHANNEL_TEMPLATES['push']}), seed {workload.seed}, "
        f"{os.cpu_count()} cores, best of {repeat} for the floor, SQLite outbox in a temporary directory, "
        f"pushes sent from {push_processes} process{'es' if push_processes > 1 else ''}\n"
        f"1-min load average {loads[0]:.1f} at start, {loads[1]:.1f} at end (above ~2, something else shared the cores)"
    )


def line_table(sections: list[Section]) -> str:
    rows = []
    for section in sections:
        for measured in section.lines.values():
            fake = f"child processes {seconds(measured.extra_cpu)} cpu s. " if measured.extra_cpu else ""
            rows.append(
                [
                    section.label, measured.what, seconds(measured.timing.wall), seconds(measured.timing.cpu),
                    f"{measured.per_second:,.0f}", f"{measured.per_core:,.0f}", fake + measured.notes,
                ]
            )  # fmt: skip
    headers = ["line", "what", "wall s", "cpu s", "msg/s", "msg/cpu s", "notes"]
    return table(headers, rows, right=(2, 3, 4, 5))


def breakdown_table(floor: Section, engine: Section, faked: list[Section]) -> str:
    """Wall milliseconds per message: the floor, what dispatch adds, the sender, against the measured total."""
    rows = []
    for section in faked:
        for channel in CHANNELS:
            rendering = floor.lines[f"{channel} floor"].ms_each
            own = engine.lines[channel].ms_each - rendering
            sending = section.lines[f"{channel} sender"].ms_each
            measured = section.lines[channel].ms_each
            rows.append(
                [
                    f"{channel}, fakes {section.label.split(maxsplit=1)[1]}", f"{rendering:.3f}", f"{own:.3f}",
                    f"{sending:.3f}", f"{rendering + own + sending:.3f}", f"{measured:.3f}",
                ]
            )  # fmt: skip
    headers = ["ms per message", "contexts+render", "dispatch's own", "SDK+HTTP+fake", "sum", "end to end"]
    return table(headers, rows, right=(1, 2, 3, 4, 5))


def ratio_table(floor: Section, faked: list[Section]) -> str:
    rows = [
        [
            f"{channel} dispatch / render-only, fakes {section.label.split(maxsplit=1)[1]}",
            ratio(section.lines[channel].timing.wall / floor.lines[f"{channel} floor"].timing.wall),
        ]
        for section in faked
        for channel in CHANNELS
    ]
    return table(["ratio of wall times", "value"], rows, right=(1,))


def target_table(floor: Section, faked: list[Section]) -> str:
    rendering = floor.lines["email render"]
    rows = [
        [
            "HTML emails rendered per CPU second (one core), autoescape on",
            f"{rendering.per_core:,.0f}",
            f">= {EMAIL_RENDER_TARGET:,}",
            "yes" if rendering.per_core >= EMAIL_RENDER_TARGET else "NO",
        ]
    ]
    for section in faked:
        both = section.lines["both"]
        rows.append(
            [
                f"messages/s outbox -> fake, render included, fakes {section.label.split(maxsplit=1)[1]}",
                f"{both.per_second:,.0f}",
                f">= {DISPATCH_TARGET:,}",
                "yes" if both.per_second >= DISPATCH_TARGET else "NO",
            ]
        )
    return table(["target", "measured", "target", "met"], rows, right=(1,))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = ("in-process", "subprocess") if args.fakes == "both" else (args.fakes,)
    sizes: Sizes = (args.batch_size, args.wave_size)
    load_at_start = os.getloadavg()[0]

    def step(text: str) -> None:
        print(f"... {text}", file=sys.stderr, flush=True)

    step(f"building {args.messages} users with carts")
    workload = build_workload(parse_count(args.messages), args.seed)
    store = TemplateStore(REPO_ROOT / "templates")
    step("1 floor: contexts and rendering alone")
    floor, rendered = render_floor(workload, store, args.repeat)
    with tempfile.TemporaryDirectory(prefix="nudge-bench-dispatch-") as temporary:
        root = Path(temporary)
        step("2 engine: dispatch to a sender without I/O")
        (root / "engine").mkdir()
        engine = engine_only(workload, store, sizes, root / "engine")
        faked = []
        for label, mode in enumerate(modes, start=3):
            step(f"{label} sender alone, then dispatch, with the fakes {mode}")
            (root / mode).mkdir()
            faked.append(
                with_fakes(str(label), mode, workload, store, rendered, sizes, root / mode, args.push_processes)
            )
    print(header(workload, args.repeat, args.push_processes, (load_at_start, os.getloadavg()[0])), end="\n\n")
    print(line_table([floor, engine, *faked]), end="\n\n")
    print(breakdown_table(floor, engine, faked), end="\n\n")
    print(ratio_table(floor, faked), end="\n\n")
    print(target_table(floor, faked))
    problems = [problem for section in [engine, *faked] for problem in section.problems]
    for problem in problems:
        print(f"\nNOT ALL SENT: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
