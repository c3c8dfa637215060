"""One dispatch of one channel in a process of its own, for the test that kills it mid-send.

    python -m tests.dispatch_child '{"database": ..., "channel": "email", "run_id": ..., "wave_size": 8,
                                     "url": ..., "api_key": ..., "service_account": ...}'

Plain engine functions against a SQLite file and the fakes the test started; prints the counts as JSON if it
lives to finish.
"""

import json
import sys
from pathlib import Path

from engine.db import connect
from engine.dispatch_policy import DispatchPolicy, WallClock
from engine.providers.fcm_push import FcmPushSender
from engine.providers.messages import EmailSender, PushSender
from engine.providers.sendgrid_email import SendGridEmailSender
from tests.dispatch_world import as_json, dispatch


def main(config: dict[str, str | int]) -> None:
    """Dispatch `config["channel"]` once, on the wall clock, in batches of 500 and waves of `wave_size`."""
    channel = str(config["channel"])
    sender: EmailSender | PushSender
    if channel == "email":
        sender = SendGridEmailSender(str(config["api_key"]), str(config["url"]), "hello@example.com", None)
    else:
        sender = FcmPushSender(Path(str(config["service_account"])), endpoint=str(config["url"]))
    policy = DispatchPolicy(clock=WallClock(), wave_size=int(config["wave_size"]))
    counts = dispatch(connect(f"sqlite:///{config['database']}"), channel, sender, policy, str(config["run_id"]))
    print(as_json(counts), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
