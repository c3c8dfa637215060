"""Where the engine keeps its state and finds its definitions, from `NUDGE_*` environment variables.

Defaults make a checkout run with nothing configured: state under `.nudge/` in the working directory (a SQLite
file and Parquet stores), definitions and templates from the repository.
"""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NUDGE_", extra="ignore")

    home: Path = Path(".nudge")
    snapshot_dir: Path | None = None
    database_url: str | None = None
    definitions_dir: Path = REPO_ROOT / "definitions"
    templates_dir: Path = REPO_ROOT / "templates"
    # The Prefect global concurrency limit (one slot) held while a flow writes or sends outbox rows of a past or
    # due window, so a live backfill and a scheduled dispatch never work on the same rows at once.
    outbox_limit: str = "nudge-outbox"
    # How long a run waits for that slot before failing with OutboxBusyError rather than hanging: a process
    # killed while holding it under a local (ephemeral) Prefect leaves it taken for good, its lease having lived
    # in that server's memory.
    outbox_wait_seconds: float = 1800.0

    @property
    def store_dir(self) -> Path:
        """Derived data: normalized events, rollups, memberships, quarantine."""
        return self.home / "store"

    @property
    def replays_dir(self) -> Path:
        """Shadow workspaces of dry-run replays, one folder each: never read by a live run."""
        return self.home / "replays"

    @property
    def snapshot(self) -> Path:
        return self.snapshot_dir if self.snapshot_dir is not None else self.home / "snapshot"

    @property
    def database(self) -> str:
        if self.database_url:
            return self.database_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.home / 'nudge.db').resolve()}"
