"""Helpers for a channel's `plan`: the skip reasons every channel shares, and keys for one row per address."""

import polars as pl

from engine.keys import key_expr


def skip_reason(*, has_address: pl.Expr, consent: pl.Expr, missing: str) -> pl.Expr:
    """`reason`: `missing` without an address, else `no_consent` unless consent is true (null is no), else null.

    The address is checked first so that a user who could never be reached is told apart from one who opted out.
    """
    return (
        pl.when(~has_address.fill_null(False))
        .then(pl.lit(missing))
        .when(~consent.fill_null(False))
        .then(pl.lit("no_consent"))
        .otherwise(pl.lit(None, pl.String))
        .alias("reason")
    )


def address_key(send_key: pl.Expr, address: pl.Expr) -> pl.Expr:
    """The send key of one address's copy of a message sent to several: a retry or a dead address then
    concerns that copy alone, and a rerun derives the same key."""
    return key_expr(send_key, address)
