"""Serve both fakes for a separately started worker: `python -m engine.fakes --dir DIR`.

Writes the FCM service account and `fakes.env` into DIR, prints the same KEY=VALUE lines on stdout,
and serves until interrupted (Ctrl-C or SIGTERM).
"""

import argparse
import contextlib
import shlex
import signal
import sys
import threading
from pathlib import Path

from engine.fakes.providers import FakeProviders

ENV_FILE = "fakes.env"


def main(argv: list[str] | None = None) -> None:
    """Run the fakes until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m engine.fakes", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="where to write the service account and env file")
    parser.add_argument("--port-sendgrid", type=int, default=0, help="SendGrid fake port (default: a free one)")
    parser.add_argument("--port-fcm", type=int, default=0, help="FCM fake port (default: a free one)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeProviders(args.dir, sendgrid_port=args.port_sendgrid, fcm_port=args.port_fcm) as fakes:
        lines = [f"{name}={shlex.quote(value)}" for name, value in fakes.env().items()]
        (args.dir / ENV_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print("\n".join(lines), flush=True)
        print(f"fakes serving; env written to {args.dir / ENV_FILE}; Ctrl-C to stop", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop
            stop.wait()


if __name__ == "__main__":
    main()
