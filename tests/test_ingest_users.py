"""Users snapshot: partition choice by as-of, repairs that keep the user, drops that do not, loud type errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from engine.contract import USER_SCHEMA, SnapshotError
from engine.ingest import load_users
from tests.snapshot_files import write

CSV = """user_id,email,push_tokens,timezone,locale,country,email_consent,push_consent,signed_up_at,plan
u1,a@example.com,"[""tok-1"",""tok-2""]",Europe/Berlin,de-DE,DE,true,YES,2026-08-01T10:00:00Z,pro
u2,not-an-email,,Mars/Olympus_Mons,,,0,,2026-08-02 10:00:00+02:00,free
u3,,[bad,,,,maybe,false,last tuesday,
 ,x@example.com,,,,,,,,
u1,a2@example.com,[],UTC,de-DE,DE,false,false,2026-08-01T10:00:00Z,plus
"""


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 9, day, hour, tzinfo=UTC)


def test_csv_users_are_repaired_deduplicated_and_counted(tmp_path: Path) -> None:
    write(tmp_path, "users/users.csv", CSV)
    load = load_users(tmp_path, as_of=at(1))

    assert load.partition is None
    assert load.files == ("users/users.csv",)
    assert (load.rows_read, load.quarantined, load.duplicates) == (5, {"missing_user_id": 1}, 1)
    assert load.warnings == {
        "invalid_email": 1,
        "invalid_email_consent": 1,
        "invalid_push_tokens": 1,
        "invalid_signed_up_at": 1,
        "invalid_timezone": 1,
    }
    users = load.users
    assert users.schema == pl.Schema([*USER_SCHEMA.items(), ("plan", pl.String())])
    assert users["user_id"].to_list() == ["u1", "u2", "u3"]
    u1, u2, u3 = users.rows(named=True)
    assert u1 == {
        "user_id": "u1",
        "email": "a2@example.com",
        "push_tokens": [],
        "timezone": "UTC",
        "locale": "de-DE",
        "country": "DE",
        "email_consent": False,
        "push_consent": False,
        "signed_up_at": datetime(2026, 8, 1, 10, tzinfo=UTC),
        "plan": "plus",
    }
    assert (u2["email"], u2["timezone"], u2["email_consent"], u2["signed_up_at"]) == (
        None,
        None,
        False,
        datetime(2026, 8, 2, 8, tzinfo=UTC),
    )
    assert (u3["push_tokens"], u3["email_consent"], u3["signed_up_at"]) == ([], False, None)


def test_latest_partition_on_or_before_as_of_is_used(tmp_path: Path) -> None:
    write(tmp_path, "users/date=2026-09-01/u.csv", "user_id,plan\nu1,free\n")
    write(tmp_path, "users/date=2026-09-10/u.csv", "user_id,plan\nu1,pro\n")
    write(tmp_path, "users/date=2026-09-10/_SUCCESS", "")

    early = load_users(tmp_path, as_of=at(9, 23))
    assert (early.partition, early.users["plan"].to_list()) == (at(1).date(), ["free"])
    on_the_day = load_users(tmp_path, as_of=at(10))
    assert (on_the_day.partition, on_the_day.users["plan"].to_list()) == (at(10).date(), ["pro"])
    with pytest.raises(SnapshotError, match="no partition on or before 2026-08-31"):
        load_users(tmp_path, as_of=datetime(2026, 8, 31, 23, tzinfo=UTC))


def test_typed_parquet_keeps_free_attribute_types(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "user_id": [2, 1],
            "push_tokens": [["t"], None],
            "email_consent": [True, None],
            "signed_up_at": [datetime(2026, 8, 1), None],
            "lifetime_orders": [3, 0],
        }
    )
    write(tmp_path, "users/part.parquet", frame)
    users = load_users(tmp_path, as_of=at(1)).users
    assert users["user_id"].to_list() == ["1", "2"]
    assert users["push_tokens"].to_list() == [[], ["t"]]
    assert users["email_consent"].to_list() == [False, True]
    assert users["signed_up_at"].to_list() == [None, datetime(2026, 8, 1, tzinfo=UTC)]
    assert users.schema["lifetime_orders"] == pl.Int64


def test_mistyped_parquet_column_names_file_column_and_types(tmp_path: Path) -> None:
    write(tmp_path, "users/part.parquet", pl.DataFrame({"user_id": ["u1"], "email_consent": ["true"]}))
    with pytest.raises(SnapshotError, match=r"users/part\.parquet: column 'email_consent' has type String, expected"):
        load_users(tmp_path, as_of=at(1))


def test_missing_user_id_column_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "users/u.ndjson", '{"id":"u1"}\n')
    with pytest.raises(SnapshotError, match=r"users/u\.ndjson: missing required column user_id"):
        load_users(tmp_path, as_of=at(1))


@pytest.mark.parametrize("zone", ["Factory", "localtime"])
def test_a_zone_only_zoneinfo_knows_is_dropped_with_a_warning(tmp_path: Path, zone: str) -> None:
    """Polars cannot convert to these zoneinfo names, so a user carrying one would break delivery controls."""
    write(tmp_path, "users/users.csv", f"user_id,timezone\nu1,{zone}\nu2,Asia/Tokyo\n")
    load = load_users(tmp_path, as_of=at(1))

    assert load.users["timezone"].to_list() == [None, "Asia/Tokyo"]
    assert load.warnings == {"invalid_timezone": 1}
