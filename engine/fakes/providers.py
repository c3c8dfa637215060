"""Both fakes together, plus the environment that points `build_senders` at them."""

from pathlib import Path
from types import TracebackType
from typing import Self

from engine.fakes.fcm import FakeFcm
from engine.fakes.sendgrid import DEFAULT_API_KEY, FakeSendGrid

SERVICE_ACCOUNT_FILE = "fcm-service-account.json"


class FakeProviders:
    """Starts a FakeSendGrid and a FakeFcm and writes the FCM service account into `directory`.

    With `record`, every request is also appended to sendgrid-requests.jsonl and fcm-requests.jsonl
    in `directory`, so a run in another process can be inspected afterwards.
    """

    def __init__(
        self,
        directory: Path,
        *,
        sendgrid_port: int = 0,
        fcm_port: int = 0,
        project_id: str = "nudge-demo",
        record: bool = True,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.sendgrid = FakeSendGrid(
            DEFAULT_API_KEY,
            port=sendgrid_port,
            record_file=directory / "sendgrid-requests.jsonl" if record else None,
        )
        self.fcm = FakeFcm(project_id, port=fcm_port, record_file=directory / "fcm-requests.jsonl" if record else None)
        self.service_account_file = directory / SERVICE_ACCOUNT_FILE

    def start(self) -> Self:
        """Start both fakes and write the service account (its token_uri needs the FCM fake's port)."""
        self.sendgrid.start()
        try:
            self.fcm.start()
            self.fcm.write_service_account(self.service_account_file)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both fakes."""
        self.sendgrid.stop()
        self.fcm.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment variables that make SendGridSettings/FcmSettings, hence build_senders, use the fakes."""
        return {
            "NUDGE_SENDGRID_API_KEY": self.sendgrid.api_key,
            "NUDGE_SENDGRID_HOST": self.sendgrid.url,
            "NUDGE_FCM_SERVICE_ACCOUNT_FILE": str(self.service_account_file),
            "NUDGE_FCM_ENDPOINT": self.fcm.url,
        }
