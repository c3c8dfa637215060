"""Random buckets: the standard MurmurHash3, pinned values, and an even split."""

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.rule_buckets import bucket_expr, murmur3_32
from tests.segment_reference import murmur3_32 as reference_murmur3


def test_known_murmur3_values():
    """The empty string and "hello" from MurmurHash3's test suites; "iceberg" from the Iceberg spec."""
    hashes = murmur3_32(pl.Series(["", "hello", "iceberg"])).tolist()
    assert hashes == [0, 0x248BFA47, 1210000089]


@settings(max_examples=50, deadline=None)
@given(keys=st.lists(st.text(max_size=30), max_size=40))
def test_vectorized_hash_equals_the_plain_one_on_any_text(keys):
    expected = [reference_murmur3(key.encode()) for key in keys]
    assert murmur3_32(pl.Series(keys, dtype=pl.String)).tolist() == expected


def test_buckets_are_pinned_so_a_change_of_hash_cannot_go_unnoticed():
    users = pl.DataFrame({"user_id": ["u1", "u2", "u3", "household-1", "ü-7"]})
    buckets = users.select(bucket_expr("exp1")).to_series().to_list()
    assert buckets == [reference_murmur3(f"exp1:{user}".encode()) % 100 for user in users["user_id"]]
    assert buckets == [51, 41, 39, 5, 72]


def test_a_fifth_of_users_fall_in_a_twenty_bucket_range_and_seeds_reshuffle():
    users = pl.DataFrame({"user_id": [f"user-{i}" for i in range(100_000)]})
    split = users.select(
        a=bucket_expr("exp1").is_between(0, 19),
        b=bucket_expr("exp2").is_between(0, 19),
    )
    share_a, share_b, both = split.select(
        pl.col("a").mean(), pl.col("b").mean(), (pl.col("a") & pl.col("b")).mean().alias("both")
    ).row(0)
    assert abs(share_a - 0.2) < 0.01 and abs(share_b - 0.2) < 0.01
    assert abs(both - 0.04) < 0.005  # independent seeds: a fifth of a fifth
