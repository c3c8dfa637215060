"""Deterministic identities, computed as Polars expressions for whole frames at once.

A key is the hash of what makes a thing itself (a journey instance: journey, user, entry time and, for keyed
event entries, the key; a send: instance, step and node), so a retried or replayed run derives the same keys and
the database's unique constraints turn a second write into a no-op. Hashes are SHA-256 of a `|`-joined text, cut
to 32 hex digits.
"""

import hashlib

import polars as pl


def text_key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def key_expr(*parts: pl.Expr) -> pl.Expr:
    """The same hash as `text_key`, over columns (all cast to text first)."""
    joined = pl.concat_str([part.cast(pl.String) for part in parts], separator="|")
    return joined.map_elements(lambda text: text_key(text), return_dtype=pl.String)
