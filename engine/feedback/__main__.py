"""Serve the SendGrid Event Webhook receiver: `python -m engine.feedback --port N --database-url URL`.

The verification key comes from NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY; the database from --database-url, else the
engine's own (NUDGE_DATABASE_URL or the SQLite file under NUDGE_HOME). Prints the webhook URL on stdout once
listening and serves until interrupted (Ctrl-C or SIGTERM).
"""

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from pydantic import ValidationError

from engine.db import connect
from engine.feedback.server import WEBHOOK_PATH, make_server
from engine.feedback.settings import WebhookSettings
from engine.settings import EngineSettings


def main(argv: Sequence[str] | None = None) -> None:
    """Run the receiver until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m engine.feedback", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0: a free one, printed at start)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: the engine's database)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = WebhookSettings()  # type: ignore[call-arg]  (read from the environment)
    except ValidationError as exc:
        parser.error(f"NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY {exc.errors()[0]['msg']}")
    database = connect(args.database_url or EngineSettings().database)
    server = make_server(public_key=settings.public_key, database=database, host=args.host, port=args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    print(f"http://{host}:{port}{WEBHOOK_PATH}", flush=True)
    print("receiving SendGrid events; Ctrl-C to stop", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop
        stop.wait()
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
