"""Property filters compare by the operand's type, leniently across the text/number split that ingest makes."""

import polars as pl
import pytest

from engine.rule_properties import where_expr

PROPERTIES = [
    '{"campaign_id":8}',
    '{"campaign_id":8.0}',
    '{"campaign_id":"8"}',
    '{"campaign_id":"08"}',
    '{"campaign_id":9007199254740993}',
    '{"campaign_id":{"id":8}}',
    '{"flag":true,"size":"L"}',
    "{}",
    None,
]


@pytest.mark.parametrize(
    ("where", "matching"),
    [
        ({"campaign_id": 8}, [0, 1, 2, 3]),  # numbers compare as numbers, numeric text too
        ({"campaign_id": 8.0}, [0, 1, 2, 3]),
        ({"campaign_id": "8"}, [0, 2]),  # text compares as written: 8.0 reads "8.0"
        ({"campaign_id": 9007199254740992}, []),  # integers beyond 2**53 stay exact
        ({"campaign_id": 9007199254740993}, [4]),
        ({"flag": True}, [6]),
        ({"flag": False}, []),
        ({"flag": True, "size": "L"}, [6]),
        ({"flag": True, "size": "M"}, []),
    ],
)
def test_where_matches(where, matching):
    frame = pl.DataFrame({"properties": PROPERTIES}, schema={"properties": pl.String})
    got = frame.with_row_index().filter(where_expr(sorted(where.items())))["index"].to_list()
    assert got == matching
