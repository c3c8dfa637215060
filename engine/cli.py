"""`nudge`: the command line for newcomers and operators.

`nudge demo` is the whole product on embedded defaults: seeded sample data, a SQLite file, a local Prefect,
and the fake providers, run day after day. Prefect is configured through environment variables before it is
imported, which is why its imports live inside the commands.
"""

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

DEMO_START = date(2026, 9, 1)
DEMO_HISTORY_DAYS = 60


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nudge", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate sample data and run the engine over consecutive days")
    demo.add_argument("--days", type=int, default=7, help="consecutive daily runs (default 7)")
    demo.add_argument("--users", type=int, default=20_000, help="sample population (default 20,000)")
    demo.add_argument("--home", type=Path, default=Path(".nudge/demo"), help="state folder (default .nudge/demo)")
    demo.add_argument("--keep", action="store_true", help="keep the state of a previous demo instead of starting anew")
    demo.add_argument(
        "--snapshot",
        type=Path,
        help="run on this snapshot instead of generated data (e.g. from `python -m engine.sample completejourney`)",
    )
    demo.add_argument(
        "--first-day",
        type=date.fromisoformat,
        help="first day to run, at 06:00 UTC (default: the last days of the sample)",
    )
    demo.set_defaults(handler=_demo)

    run = commands.add_parser("run", help="one engine run for one as_of")
    run.add_argument("--as-of", type=_instant, required=True, help="UTC instant, e.g. 2026-10-24T06:00")
    run.add_argument("--dry-run", action="store_true")
    run.set_defaults(handler=_run)

    replay = commands.add_parser(
        "replay", help="replay past days in a shadow workspace (dry run), or backfill / rebuild them live"
    )
    replay.add_argument("--start", type=date.fromisoformat, required=True, help="first day, UTC (YYYY-MM-DD)")
    replay.add_argument("--end", type=date.fromisoformat, required=True, help="last day, inclusive")
    replay.add_argument("--at", type=time.fromisoformat, default=time(6), help="time of day of each as_of, UTC (06:00)")
    replay.add_argument(
        "--live", action="store_true", help="run days never run live, on live state; their messages are not sent"
    )
    replay.add_argument(
        "--rebuild", action="store_true", help="with --live: recompute rollups and segments of days already run"
    )
    replay.add_argument("--workspace", default="default", help="shadow workspace of a dry run (default: default)")
    replay.add_argument("--fresh", action="store_true", help="start the shadow workspace over")
    replay.set_defaults(handler=_replay)

    runs = commands.add_parser("runs", help="the run history, newest first, or one run in full")
    runs.add_argument("run_id", nargs="?", help="show this run's recorded counts and definition versions")
    runs.set_defaults(handler=_runs)

    outbox = commands.add_parser("outbox", help="outbox rows by channel and status")
    outbox.set_defaults(handler=_outbox)

    journey = commands.add_parser("journey", help="who is at which node of a journey, and arrivals per node per day")
    journey.add_argument("name")
    journey.set_defaults(handler=_journey)

    path = commands.add_parser("path", help="one user's steps through journeys, with the reason for each")
    path.add_argument("user_id")
    path.add_argument("--journey")
    path.set_defaults(handler=_path)

    simulate = commands.add_parser(
        "simulate", help="run a journey (a draft too) over past days in isolation: entries, nodes, messages"
    )
    simulate.add_argument("name", help="the journey's name in the definitions")
    simulate.add_argument("--start", type=date.fromisoformat, required=True, help="first day, UTC (YYYY-MM-DD)")
    simulate.add_argument("--end", type=date.fromisoformat, required=True, help="last day, inclusive")
    simulate.add_argument("--at", type=time.fromisoformat, default=time(6), help="time of day of each run, UTC (06:00)")
    simulate.set_defaults(handler=_simulate)

    args = parser.parse_args(argv)
    args.handler(args)


def _demo(args: argparse.Namespace) -> None:
    home: Path = args.home
    if home.exists() and not args.keep:
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    _configure_local_prefect(home.parent / "prefect")
    snapshot = args.snapshot or home / "snapshot"
    os.environ["NUDGE_HOME"] = str(home)
    os.environ["NUDGE_SNAPSHOT_DIR"] = str(snapshot)

    from engine.sample.generate import generate

    if not (snapshot / "events").exists():
        print(f"Generating {args.users:,} sample users over {DEMO_HISTORY_DAYS} days into {snapshot} ...")
        generate(snapshot, users=args.users, days=DEMO_HISTORY_DAYS, start=DEMO_START)
    with _providers(home) as captured:
        from flows.daily import daily_campaign

        first = args.first_day or DEMO_START + timedelta(days=DEMO_HISTORY_DAYS - args.days)
        for offset in range(args.days):
            as_of = datetime.combine(first + timedelta(days=offset), time(6), UTC)
            print(_day_line(daily_campaign(as_of=as_of)))
        _where_to_look(home, captured)


def _run(args: argparse.Namespace) -> None:
    _configure_local_prefect(Path(os.environ.get("NUDGE_HOME", ".nudge")) / "prefect")
    from flows.daily import daily_campaign

    print(daily_campaign(as_of=args.as_of, dry_run=args.dry_run).markdown())


def _replay(args: argparse.Namespace) -> None:
    if args.rebuild and not args.live:
        sys.exit("--rebuild rewrites live segment history: add --live (a dry replay shows what it would write)")
    _configure_local_prefect(Path(os.environ.get("NUDGE_HOME", ".nudge")) / "prefect")
    from flows.backfill import backfill

    report = backfill(
        start=args.start,
        end=args.end,
        at=args.at,
        dry_run=not args.live,
        rebuild=args.rebuild,
        workspace=args.workspace,
        fresh=args.fresh,
    )
    print(report.markdown())


def _runs(args: argparse.Namespace) -> None:
    from engine.db import connect
    from engine.run_log import list_runs
    from engine.settings import EngineSettings

    runs = list_runs(connect(EngineSettings().database), limit=1000 if args.run_id else 30)
    if args.run_id:
        run = next((r for r in runs if r["run_id"].startswith(args.run_id)), None)
        if run is None:
            sys.exit(f"no run {args.run_id!r}")
        for key in ("definitions", "counts"):
            run[key] = json.loads(run[key])
        print(json.dumps(run, indent=2, default=str))
        return
    print(f"{'run id':36}  {'as_of':25}  {'status':9}  messages")
    for run in runs:
        messages = json.loads(run["counts"]).get("messages", {})
        print(f"{run['run_id']:36}  {run['as_of'].isoformat():25}  {run['status']:9}  {_compact(messages)}")


def _outbox(_args: argparse.Namespace) -> None:
    from sqlalchemy import func, select

    from engine.db import connect
    from engine.settings import EngineSettings
    from models.tables import OutboxMessage

    table = OutboxMessage.__table__  # type: ignore[attr-defined]
    with connect(EngineSettings().database).connect() as conn:
        rows = conn.execute(
            select(table.c.channel, table.c.status, table.c.reason, func.count())
            .group_by(table.c.channel, table.c.status, table.c.reason)
            .order_by(table.c.channel, table.c.status, table.c.reason)
        ).all()
    for channel, status, reason, count in rows:
        print(f"{channel:6} {status:10} {reason or '':16} {count:>8,}")


def _journey(args: argparse.Namespace) -> None:
    import polars as pl

    from engine.db import connect
    from engine.definitions import load_definitions
    from engine.journey_state import EXIT
    from engine.journey_views import arrivals_per_day, conversions, where_users_are
    from engine.render import TemplateStore
    from engine.settings import EngineSettings
    from models.journeys import SplitNode

    settings = EngineSettings()
    definitions = load_definitions(settings.definitions_dir, TemplateStore(settings.templates_dir))
    journey = definitions.journeys[args.name]
    nodes = [journey.start, *journey.nodes, EXIT]  # EXIT: goal, exit criteria, removed node
    order = pl.DataFrame({"node": list(dict.fromkeys(nodes)), "order": range(len(dict.fromkeys(nodes)))})
    view = pl.Config(tbl_rows=200, tbl_cols=-1, tbl_width_chars=250, tbl_hide_dataframe_shape=True)
    with connect(settings.database).connect() as conn, view:
        print(f"Where the instances of {args.name} are now:")
        print(where_users_are(conn, args.name))
        arrivals = arrivals_per_day(conn, args.name)
        recent = arrivals.filter(pl.col("day") >= arrivals.get_column("day").max() - timedelta(days=6))
        table = recent.with_columns(pl.col("day").dt.strftime("%m-%d")).pivot("day", index="node", values="arrivals")
        print("\nArrivals per node, last 7 days:")
        print(table.join(order, on="node", how="left").sort("order").drop("order").fill_null(0))
        if journey.holdout or journey.goal or any(isinstance(node, SplitNode) for node in journey.nodes.values()):
            print("\nGoal conversions by holdout and experiment arm:")
            print(conversions(conn, args.name))


def _path(args: argparse.Namespace) -> None:
    from engine.db import connect
    from engine.journey_views import user_path
    from engine.settings import EngineSettings

    with connect(EngineSettings().database).connect() as conn:
        steps = user_path(conn, args.user_id, args.journey)
    if steps.is_empty():
        sys.exit(f"no journey steps recorded for user {args.user_id!r}")
    for step in steps.iter_rows(named=True):
        move = f"{step['from_node'] or '(start)'} -> {step['to_node']}"
        where = step["journey"] + (f" [{step['entry_key']}]" if step["entry_key"] else "")
        print(f"{step['at']:%Y-%m-%d %H:%M}  {where:16} {move:40} {step['reason']}")


class _providers:
    """The fake providers for the demo, unless real credentials are configured."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.fakes = None

    def __enter__(self) -> Path | None:
        if os.environ.get("NUDGE_SENDGRID_API_KEY"):
            print("Real provider credentials found in the environment: messages will really be sent.")
            return None
        from engine.fakes import FakeProviders

        captured = self.home / "fakes"
        self.fakes = FakeProviders(captured).start()
        os.environ.update(self.fakes.env())
        print(f"Fake SendGrid and FCM listening on 127.0.0.1; what they receive is kept in {captured}")
        return captured

    def __exit__(self, *_exc: object) -> None:
        if self.fakes is not None:
            self.fakes.stop()


def _simulate(args: argparse.Namespace) -> None:
    import polars as pl

    from engine.settings import EngineSettings
    from engine.simulate import simulate

    report = simulate(args.name, args.start, args.end, settings=EngineSettings(), at=args.at)
    print(f"journey {report.journey} (version {report.version}), {len(report.as_ofs)} daily runs, nothing live touched")
    print(f"entries: {report.entries:,}  goal conversions: {report.goal_conversions:,}")
    print(f"messages that would have gone out: {_compact(report.messages_per_channel)}")
    for day, entered in report.entries_per_day.items():
        counts = report.node_counts.filter(pl.col("as_of").dt.date() == day)
        at_nodes = {
            f"{node}/{status}": n for node, status, n in counts.select("node", "status", "instances").iter_rows()
        }
        print(f"{day}: entered {entered:,}; {_compact(at_nodes)}")


def _configure_local_prefect(prefect_home: Path) -> None:
    """A project-local Prefect (ephemeral server over a SQLite file) unless one is configured already."""
    if os.environ.get("PREFECT_API_URL"):
        return
    prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level itself
    os.environ.setdefault("PREFECT_HOME", str(prefect_home.resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _day_line(summary: object) -> str:
    from engine.channels.registry import channels
    from engine.summary import RunSummary

    assert isinstance(summary, RunSummary)
    segments = "  ".join(f"{s.name} {s.size:,} (+{s.entered:,} -{s.exited:,})" for s in summary.segments)
    journeys = "  ".join(
        f"{j.name}: entered {j.entered:,}, exited {sum(j.exits.values()):,} {_compact(j.exits)}"
        for j in summary.journeys
    )
    messages = summary.messages()
    channels = "  ".join(
        f"{channel}: planned {messages.get(f'{channel}_planned', 0):,} (held {messages.get(f'{channel}_held', 0):,}),"
        f" sent {messages.get(f'{channel}_sent', 0):,},"
        f" skipped {messages.get(f'{channel}_skipped', 0):,}, failed {messages.get(f'{channel}_failed', 0):,}"
        for channel in channels()
    )
    day = f"{summary.as_of:%Y-%m-%d %H:%M} UTC"
    return f"\n{day}\n  segments  {segments}\n  journeys  {journeys}\n  messages  {channels}"


def _where_to_look(home: Path, captured: Path | None) -> None:
    database = home / "nudge.db"
    print("\nWhere to look:")
    print(f"  outbox and run history   sqlite3 {database} 'select channel, status, count(*) from outbox group by 1, 2'")
    print(f"                           NUDGE_HOME={home} uv run nudge runs   |   NUDGE_HOME={home} uv run nudge outbox")
    if captured is not None:
        print(f"  messages the fakes got   {captured}/sendgrid-requests.jsonl and {captured}/fcm-requests.jsonl")
    print(f"  HTML reports             {home / 'reports'}/ (each run's week, each experiment; open in a browser)")
    print(f"  Prefect UI               PREFECT_HOME={home.parent / 'prefect'} uv run prefect server start")
    print("                           then open http://127.0.0.1:4200 (flow runs, task runs, artifacts)")


def _instant(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _compact(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value:,}" for key, value in counts.items()) or "-"


if __name__ == "__main__":
    main()
