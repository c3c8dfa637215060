"""Command line: `python -m engine.sample generate --out DIR` or `... completejourney --source DIR --out DIR`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from engine.sample.completejourney import convert_completejourney
from engine.sample.generate import generate


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, write the snapshot, print what was written."""
    parser = argparse.ArgumentParser(prog="python -m engine.sample", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write a seeded synthetic app snapshot")
    gen.add_argument("--out", type=Path, required=True, help="folder to write events/ and users/ into")
    gen.add_argument("--users", type=int, default=20_000, help="population size (default 20000)")
    gen.add_argument("--days", type=int, default=60, help="days of events (default 60)")
    gen.add_argument("--start", type=date.fromisoformat, default=date(2026, 9, 1), help="first day, YYYY-MM-DD")
    gen.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    gen.add_argument("--format", choices=("parquet", "csv", "ndjson"), default="parquet", help="file format")
    cj = commands.add_parser("completejourney", help="convert The Complete Journey into a snapshot")
    cj.add_argument("--source", type=Path, required=True, help="folder with the Complete Journey Parquet files")
    cj.add_argument("--out", type=Path, required=True, help="folder to write events/ and users/ into")
    args = parser.parse_args(argv)
    if args.command == "generate":
        report = generate(args.out, users=args.users, days=args.days, start=args.start, seed=args.seed, fmt=args.format)
        print(
            f"wrote {report.events:,} events of {report.users:,} users in {report.partitions} partitions "
            f"to {report.out_dir} in {report.seconds:.1f} s ({report.events_per_second:,.0f} events/s)"
        )
        for name, count in report.events_by_type.items():
            print(f"  {name:<12} {count:>12,}")
    else:
        converted = convert_completejourney(args.source, args.out)
        print(
            f"wrote {converted.users:,} users, {converted.purchases:,} purchases, "
            f"{converted.campaign_received:,} campaign receipts and {converted.coupon_redeemed:,} redemptions "
            f"in {converted.partitions} partitions to {converted.out_dir}"
        )


if __name__ == "__main__":
    main()
