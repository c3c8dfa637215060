"""Raw snapshots in, canonical tables out.

`ingest_events` turns a raw events snapshot into a normalized, incremental Parquet store (quarantining bad rows),
`scan_events` reads that store as of an instant, and `load_users` reads the users snapshot of a day. The contract
they enforce is `engine.contract`, described for producers in `docs/input-contract.md`.
"""

from engine.ingest.store import FileReport, IngestReport, ingest_events, scan_events
from engine.ingest.users import UsersLoad, load_users

__all__ = ["FileReport", "IngestReport", "UsersLoad", "ingest_events", "load_users", "scan_events"]
