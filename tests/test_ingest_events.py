"""Events ingest: every format to one canonical schema, loud file errors, quarantine, incremental runs, as-of."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from engine.contract import EVENT_SCHEMA, QUARANTINE_SCHEMA, SnapshotError
from engine.ingest import ingest_events, scan_events
from tests.snapshot_files import write

DAY = date(2026, 9, 1)
PARTITION = "events/date=2026-09-01"
FAR_FUTURE = datetime(2030, 1, 1, tzinfo=UTC)

# One logical input, three encodings: an integer id, an offset, a naive (UTC) late timestamp, unsorted and
# nested properties with a null to drop.
CSV = """user_id,event,ts,value,properties
u1,app_open,2026-09-01T08:00:00Z,,
42,purchase,2026-09-01T10:30:00.250+02:00,19.99,"{""items"":2,""cart_id"":""c1""}"
u3,view_item,2026-08-31 23:59:59,,"{""price"":5.5,""item"":{""tags"":null,""sku"":""a""}}"
"""
NDJSON = """{"user_id":"u1","event":"app_open","ts":"2026-09-01T08:00:00Z"}
{"user_id":42,"event":"purchase","ts":"2026-09-01T10:30:00.250+02:00","value":19.99,"properties":{"items":2,"cart_id":"c1"}}

{"user_id":"u3","event":"view_item","ts":"2026-08-31T23:59:59","properties":{"price":5.5,"item":{"tags":null,"sku":"a"}}}
"""
EXPECTED = pl.DataFrame(
    {
        "user_id": ["u3", "u1", "42"],
        "event": ["view_item", "app_open", "purchase"],
        "ts": [
            datetime(2026, 8, 31, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 9, 1, 8, tzinfo=UTC),
            datetime(2026, 9, 1, 8, 30, 0, 250_000, tzinfo=UTC),
        ],
        "value": [None, None, 19.99],
        "properties": ['{"item":{"sku":"a"},"price":5.5}', None, '{"cart_id":"c1","items":2}'],
        "load_date": [DAY, DAY, DAY],
    },
    schema=EVENT_SCHEMA,
)


def parquet_rows(properties: pl.Series) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": ["u1", "42", "u3"],
            "event": ["app_open", "purchase", "view_item"],
            "ts": [
                datetime(2026, 9, 1, 8),
                datetime(2026, 9, 1, 8, 30, 0, 250_000),
                datetime(2026, 8, 31, 23, 59, 59),
            ],
            "value": [None, 19.99, None],
            "properties": properties,
        },
    ).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))


def ingest_all(snapshot: Path, store: Path) -> pl.DataFrame:
    ingest_events(snapshot, store_dir=store, through=DAY)
    return scan_events(store, as_of=FAR_FUTURE).collect()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("part-0.csv", CSV),
        ("part-0.ndjson", NDJSON),
        ("part-0.jsonl", NDJSON),
        (
            "json-text.parquet",
            parquet_rows(
                pl.Series([None, '{"items":2,"cart_id":"c1"}', '{"price":5.5,"item":{"tags":null,"sku":"a"}}'])
            ),
        ),
        (
            "struct.parquet",
            parquet_rows(
                pl.Series(
                    [None, {"items": 2, "cart_id": "c1"}, {"price": 5.5, "item": {"tags": None, "sku": "a"}}],
                    strict=False,
                )
            ),
        ),
    ],
)
def test_every_format_loads_to_the_canonical_rows(tmp_path: Path, name: str, content: str | pl.DataFrame) -> None:
    write(tmp_path / "snap", f"{PARTITION}/{name}", content)
    assert_frame_equal(ingest_all(tmp_path / "snap", tmp_path / "store"), EXPECTED)


def test_zoned_parquet_timestamps_are_converted_to_utc(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {"user_id": [7], "event": ["x"], "ts": [datetime(2026, 9, 1, 12)], "value": [3]},
    ).with_columns(pl.col("ts").dt.replace_time_zone("Europe/Paris").dt.cast_time_unit("ns"))
    write(tmp_path / "snap", f"{PARTITION}/a.parquet", frame)
    loaded = ingest_all(tmp_path / "snap", tmp_path / "store")
    assert loaded.row(0) == ("7", "x", datetime(2026, 9, 1, 10, tzinfo=UTC), 3.0, None, DAY)


def test_missing_required_column_names_file_and_column(tmp_path: Path) -> None:
    write(tmp_path / "snap", f"{PARTITION}/a.csv", "user_id,ts\nu1,2026-09-01T00:00:00Z\n")
    with pytest.raises(SnapshotError, match=r"events/date=2026-09-01/a\.csv: missing required column event"):
        ingest_events(tmp_path / "snap", store_dir=tmp_path / "store", through=DAY)


def test_ndjson_column_no_record_has_is_missing(tmp_path: Path) -> None:
    write(tmp_path / "snap", f"{PARTITION}/a.ndjson", '{"user_id":"u1","event":"x"}\n')
    with pytest.raises(SnapshotError, match=r"a\.ndjson: missing required column ts"):
        ingest_events(tmp_path / "snap", store_dir=tmp_path / "store", through=DAY)


@pytest.mark.parametrize(
    ("column", "values", "actual", "expected"),
    [
        ("ts", pl.Series([1_788_000_000], dtype=pl.Int64), "Int64", "Datetime"),
        ("value", pl.Series(["12.5"]), "String", "a number"),
    ],
)
def test_mistyped_parquet_column_names_file_column_and_types(
    tmp_path: Path, column: str, values: pl.Series, actual: str, expected: str
) -> None:
    good = pl.DataFrame({"user_id": ["u1"], "event": ["x"], "ts": [datetime(2026, 9, 1, tzinfo=UTC)], "value": [1.0]})
    write(tmp_path / "snap", f"{PARTITION}/bad.parquet", good.with_columns(values.alias(column)))
    with pytest.raises(SnapshotError) as raised:
        ingest_events(tmp_path / "snap", store_dir=tmp_path / "store", through=DAY)
    message = str(raised.value)
    assert message.startswith(f"{PARTITION}/bad.parquet:")
    assert f"'{column}'" in message
    assert actual in message
    assert expected in message
    assert not (tmp_path / "store" / PARTITION / "bad.parquet").exists()


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "snap", f"{PARTITION}/a.xlsx", "")
    write(tmp_path / "snap", f"{PARTITION}/_SUCCESS", "")
    with pytest.raises(SnapshotError, match=r"a\.xlsx: unknown file format '\.xlsx'"):
        ingest_events(tmp_path / "snap", store_dir=tmp_path / "store", through=DAY)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["events/2026-09-01/a.csv"], r"events/2026-09-01: expected only date=YYYY-MM-DD partition folders"),
        (["events/a.csv"], r"events/a\.csv: expected only date=YYYY-MM-DD partition folders"),
        ([f"{PARTITION}/a.csv", f"{PARTITION}/a.ndjson"], r"a\.ndjson: same name as .*/a\.csv"),
    ],
)
def test_layout_surprises_are_refused(tmp_path: Path, files: list[str], message: str) -> None:
    for rel in files:
        write(tmp_path / "snap", rel, CSV)
    with pytest.raises(SnapshotError, match=message):
        ingest_events(tmp_path / "snap", store_dir=tmp_path / "store", through=DAY)


def test_bad_rows_are_quarantined_with_reason_and_the_rest_loads(tmp_path: Path) -> None:
    write(
        tmp_path / "snap",
        f"{PARTITION}/a.csv",
        "user_id,event,ts,value,properties\n"
        "u1,open,2026-09-01T10:00:00Z,,\n"
        "u2,open,yesterday-ish,,\n"
        " ,open,2026-09-01T10:00:00Z,,\n"
        "u4,,2026-09-01T10:00:00Z,,\n"
        "u5,buy,2026-09-01T10:00:00Z,12;5,\n"
        "u6,buy,2026-09-01T10:00:00Z,NaN,\n"
        'u7,open,2026-09-01T10:00:00Z,,"[1,2]"\n'
        'u8,open,2026-09-01T10:00:00Z,,"{""a"":"\n'
        "u9,open,2026-09-02T01:00:01Z,,\n"
        "u10,open,2026-09-02T01:00:00Z,,\n",
    )
    report = ingest_events(tmp_path / "snap", store_dir=tmp_path / "store", through=DAY)

    (file,) = report.files
    assert (file.rows_read, file.rows_loaded) == (10, 2)
    assert file.quarantined == {
        "bad_properties": 2,
        "bad_ts": 1,
        "bad_value": 2,
        "future_ts": 1,
        "missing_event": 1,
        "missing_user_id": 1,
    }
    assert report.rows_quarantined == 8
    assert report.quarantined_by_reason == file.quarantined
    quarantine = pl.read_parquet(tmp_path / "store" / "quarantine" / PARTITION / "a.parquet")
    assert quarantine.schema == QUARANTINE_SCHEMA
    assert quarantine.filter(pl.col("reason") == "bad_ts").row(0, named=True) == {
        "user_id": "u2",
        "event": "open",
        "ts": "yesterday-ish",
        "value": None,
        "properties": None,
        "source_file": f"{PARTITION}/a.csv",
        "row": 2,
        "reason": "bad_ts",
    }
    loaded = scan_events(tmp_path / "store", as_of=FAR_FUTURE).collect()
    assert loaded["user_id"].to_list() == ["u1", "u10"]


def test_unchanged_files_are_skipped_and_changed_ones_renormalized(tmp_path: Path) -> None:
    snap, store = tmp_path / "snap", tmp_path / "store"
    write(snap, "events/date=2026-08-31/a.csv", CSV)
    changing = write(snap, f"{PARTITION}/b.csv", CSV)
    first = ingest_events(snap, store_dir=store, through=DAY)
    assert first.files_ingested == 2

    again = ingest_events(snap, store_dir=store, through=DAY)
    assert (again.files, again.files_unchanged) == ((), 2)
    assert again.fingerprint == first.fingerprint

    changing.write_text(CSV + "u9,late_fix,2026-09-01T12:00:00Z,,\n", encoding="utf-8")
    corrected = ingest_events(snap, store_dir=store, through=DAY)
    assert [f.path for f in corrected.files] == [f"{PARTITION}/b.csv"]
    assert corrected.skipped == ("events/date=2026-08-31/a.csv",)
    assert corrected.fingerprint != first.fingerprint
    assert scan_events(store, as_of=FAR_FUTURE).filter(pl.col("event") == "late_fix").collect().height == 1

    changing.unlink()
    removed = ingest_events(snap, store_dir=store, through=DAY)
    assert removed.removed == (f"{PARTITION}/b.csv",)
    assert not (store / PARTITION).exists()


def test_partitions_after_through_wait_for_a_later_run(tmp_path: Path) -> None:
    write(tmp_path / "snap", "events/date=2026-09-02/a.csv", CSV.replace("2026-09-01", "2026-09-02"))
    report = ingest_events(tmp_path / "snap", store_dir=tmp_path / "store", through=DAY)
    assert (report.files, report.skipped) == ((), ())


def test_scan_events_excludes_as_of_and_includes_a_microsecond_before(tmp_path: Path) -> None:
    as_of = datetime(2026, 9, 1, 12, tzinfo=UTC)
    before = as_of - timedelta(microseconds=1)
    rows = "\n".join(
        f"u1,{name},{ts.isoformat()}"
        for name, ts in [("before", before), ("at", as_of), ("after", as_of + timedelta(hours=1))]
    )
    write(tmp_path / "snap", f"{PARTITION}/a.csv", f"user_id,event,ts\n{rows}\n")
    # Arrived the day after as_of's date: a replay as of that instant must not see it.
    write(tmp_path / "snap", "events/date=2026-09-02/late.csv", f"user_id,event,ts\nu2,late,{before.isoformat()}\n")
    ingest_events(tmp_path / "snap", store_dir=tmp_path / "store", through=date(2026, 9, 2))

    scan = scan_events(tmp_path / "store", as_of=as_of)
    assert isinstance(scan, pl.LazyFrame)
    assert scan.collect_schema() == EVENT_SCHEMA
    seen = scan.collect()
    assert seen.select("event", "ts").rows() == [("before", before)]
    same_instant_in_tokyo = as_of.astimezone(ZoneInfo("Asia/Tokyo"))
    assert scan_events(tmp_path / "store", as_of=same_instant_in_tokyo).collect().equals(seen)
    with pytest.raises(ValueError, match="timezone-aware"):
        scan_events(tmp_path / "store", as_of=as_of.replace(tzinfo=None))


def test_scan_events_on_an_empty_store_has_the_canonical_schema(tmp_path: Path) -> None:
    assert scan_events(tmp_path, as_of=FAR_FUTURE).collect().schema == EVENT_SCHEMA


def test_properties_that_cannot_share_a_type_keep_their_compact_text(tmp_path: Path) -> None:
    write(
        tmp_path / "snap",
        f"{PARTITION}/a.ndjson",
        "\n".join(
            json.dumps({"user_id": "u1", "event": "x", "ts": "2026-09-01T00:00:00Z", "properties": props})
            for props in ({"b": {"x": 1}, "a": 1}, {"b": 3})
        ),
    )
    report = ingest_events(tmp_path / "snap", store_dir=tmp_path / "store", through=DAY)
    assert not report.files[0].properties_canonical
    loaded = scan_events(tmp_path / "store", as_of=FAR_FUTURE).collect()
    assert sorted(loaded["properties"].to_list()) == ['{"b":3}', '{"b":{"x":1},"a":1}']
