"""Loading the users snapshot that was current on a given day."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl

from engine.contract import USER_SCHEMA, USERS_DIR, Reason, SnapshotError
from engine.ingest.formats import raw_format, raw_schema, scan_raw
from engine.ingest.layout import data_files, is_hidden, partitions
from engine.ingest.parse import blank_to_null, boolean, is_text, utc_timestamp
from engine.ingest.typecheck import BOOLEAN, ID, TEXT, TEXT_LIST, TIMESTAMP, Accepts, check_columns

_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
_TOKENS = pl.List(pl.String())


def _usable_zones() -> list[str]:
    """IANA names both zoneinfo and Polars accept: a few ("Factory", "localtime") exist only for zoneinfo,
    and a user carrying one would make every later time-zone conversion of the population fail."""
    probe = pl.Series([None], dtype=pl.Datetime("us", "UTC"))
    usable = []
    for zone in sorted(zoneinfo.available_timezones()):
        try:
            probe.dt.convert_time_zone(zone)
        except pl.exceptions.ComputeError:
            continue
        usable.append(zone)
    return usable


_ZONES = _usable_zones()


@dataclass(frozen=True)
class UsersLoad:
    """The canonical users table plus what loading it had to drop or repair.

    `users` has the USER_SCHEMA columns first, then the free attributes, one row per user_id, sorted by it.
    `quarantined` counts rows dropped by reason, `duplicates` rows dropped because a later row had the same
    user_id, and `warnings` loaded users with a value set to null/false/empty because it was unreadable.
    """

    users: pl.DataFrame
    partition: date | None
    files: tuple[str, ...]
    rows_read: int
    quarantined: dict[str, int]
    duplicates: int
    warnings: dict[str, int]


def accepted_types(*, typed: bool) -> dict[str, Accepts]:
    """Column rules for a raw users file; formats without types (`typed=False`) may hold text for any."""
    return {
        "user_id": ID,
        "email": TEXT,
        "push_tokens": TEXT_LIST.or_text(not typed),
        "timezone": TEXT,
        "locale": TEXT,
        "country": TEXT,
        "email_consent": BOOLEAN.or_text(not typed),
        "push_consent": BOOLEAN.or_text(not typed),
        "signed_up_at": TIMESTAMP.or_text(not typed),
    }


def normalize_users(raw: pl.LazyFrame, schema: pl.Schema) -> pl.LazyFrame:
    """Standard columns in canonical types, free attributes as they are, plus `__reason` and `__warn_*` flags.

    A value that is present but unreadable becomes null (consents: false, tokens: empty) and raises the flag
    of its column; only a missing user_id rejects the row, since one bad attribute should not lose a user.
    """

    def dtype(name: str) -> pl.DataType:
        return schema.get(name, pl.Null())

    def column(name: str) -> pl.Expr:
        return pl.col(name) if name in schema else pl.lit(None)

    def present(name: str) -> pl.Expr:
        return blank_to_null(column(name)).is_not_null() if is_text(dtype(name)) else column(name).is_not_null()

    email = blank_to_null(column("email"))
    zone = blank_to_null(column("timezone"))
    if is_text(dtype("push_tokens")):
        compact = blank_to_null(column("push_tokens")).str.json_path_match("$")
        tokens = pl.when(compact.str.starts_with("[")).then(compact).str.json_decode(_TOKENS)
    else:
        tokens = column("push_tokens").cast(_TOKENS)
    tokens = tokens.list.eval(blank_to_null(pl.element())).list.drop_nulls()
    email_consent = boolean(column("email_consent"), dtype("email_consent"))
    push_consent = boolean(column("push_consent"), dtype("push_consent"))
    signed_up_at = utc_timestamp(column("signed_up_at"), dtype("signed_up_at"))
    free = [pl.col(name) for name in schema if name not in USER_SCHEMA]
    return raw.select(
        blank_to_null(column("user_id")).alias("user_id"),
        pl.when(email.str.contains(_EMAIL)).then(email).alias("email"),
        tokens.fill_null(pl.lit([], dtype=_TOKENS)).alias("push_tokens"),
        pl.when(zone.is_in(_ZONES)).then(zone).alias("timezone"),
        blank_to_null(column("locale")).alias("locale"),
        blank_to_null(column("country")).alias("country"),
        email_consent.fill_null(False).alias("email_consent"),
        push_consent.fill_null(False).alias("push_consent"),
        signed_up_at.alias("signed_up_at"),
        *free,
        pl.when(blank_to_null(column("user_id")).is_null())
        .then(pl.lit(Reason.MISSING_USER_ID.value))
        .alias("__reason"),
        (present("email") & ~email.str.contains(_EMAIL)).alias("__warn_invalid_email"),
        (present("push_tokens") & tokens.is_null()).alias("__warn_invalid_push_tokens"),
        (present("timezone") & ~zone.is_in(_ZONES)).alias("__warn_invalid_timezone"),
        (present("email_consent") & email_consent.is_null()).alias("__warn_invalid_email_consent"),
        (present("push_consent") & push_consent.is_null()).alias("__warn_invalid_push_consent"),
        (present("signed_up_at") & signed_up_at.is_null()).alias("__warn_invalid_signed_up_at"),
    ).with_columns([pl.col(name).cast(dtype) for name, dtype in USER_SCHEMA.items()])


def load_users(snapshot_dir: Path, *, as_of: datetime) -> UsersLoad:
    """The users as they were on as_of's UTC date.

    Args:
        snapshot_dir: the snapshot root, holding `users/` with either `date=YYYY-MM-DD/` partitions (the latest
            on or before as_of's date is used, so a replay sees the attributes of its day) or plain files.
        as_of: a timezone-aware instant.

    Raises:
        SnapshotError: no usable users files, or a missing or mistyped column.
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    folder, partition = _users_folder(snapshot_dir, day=as_of.astimezone(UTC).date())
    paths = data_files(folder, base=snapshot_dir)
    if not paths:
        raise SnapshotError(f"{folder.relative_to(snapshot_dir).as_posix()}/: no users files")
    rels = tuple(path.relative_to(snapshot_dir).as_posix() for path in paths)
    combined = pl.concat(
        [_read_users_file(path, rel=rel) for path, rel in zip(paths, rels, strict=True)], how="diagonal_relaxed"
    )
    rejected = combined.filter(pl.col("__reason").is_not_null())
    good = combined.filter(pl.col("__reason").is_null())
    users = good.unique("user_id", keep="last", maintain_order=True).sort("user_id")
    flags = [name for name in users.columns if name.startswith("__warn_")]
    warnings = {name.removeprefix("__warn_"): int(users[name].sum()) for name in flags}
    return UsersLoad(
        users=users.drop("__reason", *flags),
        partition=partition,
        files=rels,
        rows_read=combined.height,
        quarantined=dict(sorted(rejected["__reason"].value_counts().rows())),
        duplicates=good.height - users.height,
        warnings={name: count for name, count in sorted(warnings.items()) if count},
    )


def _users_folder(snapshot_dir: Path, *, day: date) -> tuple[Path, date | None]:
    """The folder to read: the latest partition on or before `day`, or `users/` itself when unpartitioned."""
    root = snapshot_dir / USERS_DIR
    if not root.is_dir():
        raise SnapshotError(f"{USERS_DIR}/: no users folder in the snapshot")
    if not any(entry.is_dir() and not is_hidden(entry) for entry in root.iterdir()):
        return root, None
    eligible = [(found, folder) for found, folder in partitions(root, base=snapshot_dir) if found <= day]
    if not eligible:
        raise SnapshotError(f"{USERS_DIR}/: no partition on or before {day.isoformat()}")
    found, folder = eligible[-1]
    return folder, found


def _read_users_file(path: Path, *, rel: str) -> pl.DataFrame:
    raw = scan_raw(path, rel=rel)
    schema = raw_schema(raw, rel=rel)
    typed = raw_format(path, rel=rel) == "parquet"
    check_columns(schema, accepts=accepted_types(typed=typed), required=("user_id",), rel=rel)
    try:
        return normalize_users(raw, schema).collect()
    except pl.exceptions.PolarsError as exc:
        raise SnapshotError(f"{rel}: unreadable: {exc}") from exc
