"""Who the synthetic app's users are: where they live, how they behave, and what the users file says.

The public columns follow the users contract; the columns starting with `_` are latent traits the activity
model reads (archetype rates, lifetime) and are never written out.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

import polars as pl

from engine.sample.rng import bits, lookup, pick, trials, uniform

# (IANA zone, country, locale, weight): the locale is one a user there plausibly has; zones with several
# common locales appear once per locale.
ZONES: tuple[tuple[str, str, str, float], ...] = (
    ("America/New_York", "US", "en-US", 11.0),
    ("America/New_York", "US", "es-US", 1.0),
    ("America/Chicago", "US", "en-US", 6.0),
    ("America/Denver", "US", "en-US", 2.0),
    ("America/Phoenix", "US", "en-US", 1.0),
    ("America/Los_Angeles", "US", "en-US", 6.0),
    ("America/Los_Angeles", "US", "es-US", 1.5),
    ("America/Anchorage", "US", "en-US", 0.3),
    ("Pacific/Honolulu", "US", "en-US", 0.3),
    ("America/Toronto", "CA", "en-CA", 2.0),
    ("America/Toronto", "CA", "fr-CA", 1.0),
    ("America/Vancouver", "CA", "en-CA", 1.0),
    ("America/St_Johns", "CA", "en-CA", 0.2),
    ("America/Mexico_City", "MX", "es-MX", 3.0),
    ("America/Bogota", "CO", "es-CO", 1.5),
    ("America/Lima", "PE", "es-PE", 0.8),
    ("America/Santiago", "CL", "es-CL", 1.0),
    ("America/Argentina/Buenos_Aires", "AR", "es-AR", 1.5),
    ("America/Sao_Paulo", "BR", "pt-BR", 4.0),
    ("Europe/London", "GB", "en-GB", 6.0),
    ("Europe/Dublin", "IE", "en-IE", 0.8),
    ("Europe/Lisbon", "PT", "pt-PT", 0.8),
    ("Europe/Madrid", "ES", "es-ES", 3.0),
    ("Europe/Paris", "FR", "fr-FR", 4.0),
    ("Europe/Brussels", "BE", "nl-BE", 0.5),
    ("Europe/Brussels", "BE", "fr-BE", 0.4),
    ("Europe/Amsterdam", "NL", "nl-NL", 1.5),
    ("Europe/Berlin", "DE", "de-DE", 5.0),
    ("Europe/Zurich", "CH", "de-CH", 0.7),
    ("Europe/Rome", "IT", "it-IT", 3.0),
    ("Europe/Stockholm", "SE", "sv-SE", 1.0),
    ("Europe/Oslo", "NO", "nb-NO", 0.5),
    ("Europe/Copenhagen", "DK", "da-DK", 0.5),
    ("Europe/Helsinki", "FI", "fi-FI", 0.5),
    ("Europe/Warsaw", "PL", "pl-PL", 2.0),
    ("Europe/Prague", "CZ", "cs-CZ", 0.7),
    ("Europe/Athens", "GR", "el-GR", 0.6),
    ("Europe/Kyiv", "UA", "uk-UA", 1.0),
    ("Europe/Istanbul", "TR", "tr-TR", 2.0),
    ("Africa/Cairo", "EG", "ar-EG", 1.0),
    ("Africa/Lagos", "NG", "en-NG", 1.5),
    ("Africa/Nairobi", "KE", "en-KE", 0.7),
    ("Africa/Johannesburg", "ZA", "en-ZA", 1.0),
    ("Asia/Dubai", "AE", "ar-AE", 0.8),
    ("Asia/Tehran", "IR", "fa-IR", 0.3),
    ("Asia/Karachi", "PK", "en-PK", 1.0),
    ("Asia/Kolkata", "IN", "en-IN", 4.5),
    ("Asia/Kolkata", "IN", "hi-IN", 1.5),
    ("Asia/Kathmandu", "NP", "ne-NP", 0.2),
    ("Asia/Dhaka", "BD", "bn-BD", 0.8),
    ("Asia/Bangkok", "TH", "th-TH", 1.0),
    ("Asia/Ho_Chi_Minh", "VN", "vi-VN", 1.5),
    ("Asia/Jakarta", "ID", "id-ID", 3.0),
    ("Asia/Kuala_Lumpur", "MY", "ms-MY", 0.8),
    ("Asia/Singapore", "SG", "en-SG", 0.7),
    ("Asia/Manila", "PH", "en-PH", 2.0),
    ("Asia/Shanghai", "CN", "zh-CN", 1.0),
    ("Asia/Hong_Kong", "HK", "zh-HK", 0.5),
    ("Asia/Taipei", "TW", "zh-TW", 0.7),
    ("Asia/Seoul", "KR", "ko-KR", 1.5),
    ("Asia/Tokyo", "JP", "ja-JP", 3.0),
    ("Australia/Perth", "AU", "en-AU", 0.4),
    ("Australia/Adelaide", "AU", "en-AU", 0.3),
    ("Australia/Sydney", "AU", "en-AU", 1.5),
    ("Australia/Melbourne", "AU", "en-AU", 1.0),
    ("Pacific/Auckland", "NZ", "en-NZ", 0.5),
)

# Share of sessions starting in each local hour: quiet nights, a commute bump, lunch, and an evening peak.
DIURNAL = (0.6, 0.35, 0.2, 0.15, 0.15, 0.3, 0.9, 2.0, 3.0, 3.2, 3.0, 3.3,
           4.0, 3.8, 3.2, 3.0, 3.2, 3.8, 4.6, 5.6, 6.0, 5.4, 3.8, 1.8)  # fmt: skip


@dataclass(frozen=True)
class Archetype:
    """A behaviour class fixed at signup; rates are per active day, the hazard is the daily churn chance."""

    name: str
    share: float
    sessions_per_day: float
    views_per_session: float
    cart_rate: float
    buy_rate: float
    churn_hazard: float


ARCHETYPES: tuple[Archetype, ...] = (
    Archetype("bounce", 0.30, 0.0, 1.0, 0.03, 0.10, 1.0),  # onboarding session only, never back
    Archetype("casual", 0.42, 0.25, 2.0, 0.05, 0.25, 0.02),
    Archetype("regular", 0.21, 0.7, 3.0, 0.08, 0.40, 0.006),
    Archetype("loyal", 0.07, 1.8, 4.0, 0.12, 0.60, 0.001),  # heavy buyers who stay
)
PRE_PERIOD_SHARE = 0.6
"""Share of users who signed up before the period (many have churned by its start)."""
PRE_PERIOD_DAYS = 366
PLATFORMS = ("android", "ios", "web")
PLATFORM_WEIGHTS = (0.5, 0.35, 0.15)
TOKEN_SHARE_ON_MOBILE = 0.72
"""With 85% of users on mobile this gives ~60% of users with at least one push token."""
EMAIL_SHARE = 0.85
EMAIL_DOMAINS = ("example.com", "example.net", "example.org")
"""Reserved for documentation (RFC 2606): synthetic addresses that can never reach a real person."""
PLANS = ("free", "plus", "pro")
APP_VERSIONS = ("5.12.0", "5.11.2", "5.10.1", "5.9.0", "4.8.3")
APP_VERSION_WEIGHTS = (0.46, 0.27, 0.14, 0.08, 0.05)
SIGNUP_METHODS = ("email", "google", "apple")
_TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_"
_TOKEN_PAIRS = pl.Series([a + b for a in _TOKEN_ALPHABET for b in _TOKEN_ALPHABET], dtype=pl.String)
"""4,096 two-character chunks: 12 random bits pick one, 5 per 64-bit draw."""


def utc_offsets(first: date, last: date) -> pl.DataFrame:
    """Minutes east of UTC of each zone (`_zone`, an index into ZONES) on each `_day` from first to last.

    Taken at noon UTC: a DST switch moves that day's activity by an hour for some users, which no consumer of
    sample data can notice.
    """
    noons = pl.LazyFrame().select(
        pl.datetime_range(
            datetime.combine(first, time(12)), datetime.combine(last, time(12)), "1d", time_zone="UTC"
        ).alias("_noon")
    )
    per_zone = [
        noons.select(
            pl.col("_noon").dt.date().alias("_day"),
            pl.lit(index, dtype=pl.UInt32).alias("_zone"),
            (pl.col("_noon").dt.convert_time_zone(zone).pipe(lambda t: t.dt.base_utc_offset() + t.dt.dst_offset()))
            .dt.total_minutes()
            .alias("_offset"),
        )
        for index, (zone, *_) in enumerate(ZONES)
    ]
    return pl.concat(per_zone).collect()


def utc_millisecond(seed: int, stream: str, keys: list[pl.Expr], offset: pl.Expr) -> pl.Expr:
    """A millisecond within a UTC day at which a user acts, drawn in their local time by DIURNAL.

    The local time is shifted by the zone's offset and wrapped into the same UTC day, which keeps every
    chunk inside one UTC date while the local-time rhythm stays exact.
    """
    hour = pick(uniform(seed, f"{stream}/hour", *keys), DIURNAL).cast(pl.Int64)
    within = (uniform(seed, f"{stream}/ms", *keys) * 3_600_000).floor().cast(pl.Int64)
    local_ms = hour * 3_600_000 + within
    return (local_ms - offset.cast(pl.Int64) * 60_000) % 86_400_000


def push_tokens(holders: pl.LazyFrame, *, seed: int) -> pl.LazyFrame:
    """A `push_token` per row of (`_uid`, `_k`): a random string shaped like an FCM registration token.

    22 characters, `:APA91b`, 134 characters of base64url: 78 two-character chunks, five per 64-bit draw.
    """
    words = [f"_w{word}" for word in range(16)]
    chunks = [
        lookup(
            _TOKEN_PAIRS,
            (pl.col(word) // pl.lit(1 << (12 * part), dtype=pl.UInt64) % pl.lit(4096, dtype=pl.UInt64)).cast(pl.UInt32),
            pl.String(),
        )
        for word in words
        for part in range(5)
    ]
    return (
        holders.with_columns(
            bits(seed, "token", pl.col("_uid"), pl.col("_k"), pl.lit(index)).alias(word)
            for index, word in enumerate(words)
        )
        .with_columns(pl.concat_str([*chunks[:11], pl.lit(":APA91b"), *chunks[11:78]]).alias("push_token"))
        .drop(words)
    )


def build_users(count: int, *, start: date, days: int, seed: int, offsets: pl.DataFrame) -> pl.DataFrame:
    """The whole population with public attributes and latent traits, one row per user.

    Signups spread over the year before `start` (skewed to recent ones: a growing app) and over the period;
    `_signup_day` and `_last_day` (the last active day) are day numbers relative to `start`.

    Args:
        count: how many users.
        start: the first day of the period.
        days: the period's length.
        seed: the random seed.
        offsets: `utc_offsets` covering PRE_PERIOD_DAYS before `start` to the period's end.
    """
    uid = pl.col("_uid")

    def draw(stream: str) -> pl.Expr:
        return uniform(seed, stream, uid)

    def trait(name: str) -> pl.Expr:
        return lookup([getattr(a, name) for a in ARCHETYPES], pl.col("_archetype"), pl.Float64())

    midnight = datetime.combine(start, time(), tzinfo=UTC)
    plan_index = (
        pl.when(pl.col("_archetype") == len(ARCHETYPES) - 1)
        .then(pick(draw("plan"), (0.4, 0.4, 0.2)))
        .otherwise(pick(draw("plan"), (0.85, 0.12, 0.03)))
    )
    users = (
        pl.select(pl.int_range(count, dtype=pl.Int64).alias("_uid"))
        .with_columns(
            pl.format("u{}", uid.cast(pl.String).str.zfill(max(7, len(str(count))))).alias("user_id"),
            pick(draw("zone"), [zone[3] for zone in ZONES]).alias("_zone"),
            pick(draw("archetype"), [a.share for a in ARCHETYPES]).alias("_archetype"),
            pick(draw("platform"), PLATFORM_WEIGHTS).alias("_platform"),
            pl.when(draw("pre_period") < PRE_PERIOD_SHARE)
            .then(-1 - (draw("signup_day").pow(2) * (PRE_PERIOD_DAYS - 1)).floor())
            .otherwise((draw("signup_day") * days).floor())
            .cast(pl.Int64)
            .alias("_signup_day"),
        )
        .with_columns((pl.lit(start) + pl.duration(days=pl.col("_signup_day"))).alias("_day"))
        .join(offsets, on=["_day", "_zone"], how="left", maintain_order="left")
        .with_columns(
            (
                pl.lit(midnight)
                + pl.duration(days=pl.col("_signup_day"))
                + pl.duration(milliseconds=utc_millisecond(seed, "signup", [uid], pl.col("_offset")))
            ).alias("signed_up_at"),
            (trait("sessions_per_day") * (0.5 + draw("rate"))).alias("_sessions_per_day"),
            trait("views_per_session").alias("_views"),
            trait("cart_rate").alias("_cart_rate"),
            trait("buy_rate").alias("_buy_rate"),
            (
                pl.col("_signup_day")
                + pl.when(pl.col("_archetype") == 0)
                .then(0)
                .otherwise(1 + trials(draw("lifetime"), 1.0 - trait("churn_hazard")))
            ).alias("_last_day"),
            pl.when((pl.col("_platform") < 2) & (draw("has_token") < TOKEN_SHARE_ON_MOBILE))
            .then(pl.when(draw("two_tokens") < 0.3).then(2).otherwise(1))
            .otherwise(0)
            .alias("_tokens"),
            pl.when(draw("has_email") < EMAIL_SHARE)
            .then(pl.format("{}@{}", "user_id", lookup(EMAIL_DOMAINS, pick(draw("domain"), (1, 1, 1)), pl.String())))
            .alias("email"),
            lookup([z[0] for z in ZONES], pl.col("_zone"), pl.String()).alias("timezone"),
            lookup([z[2] for z in ZONES], pl.col("_zone"), pl.String()).alias("locale"),
            lookup([z[1] for z in ZONES], pl.col("_zone"), pl.String()).alias("country"),
            lookup(PLANS, plan_index, pl.String()).alias("plan"),
            lookup(APP_VERSIONS, pick(draw("app_version"), APP_VERSION_WEIGHTS), pl.String()).alias("app_version"),
            lookup(PLATFORMS, pl.col("_platform"), pl.String()).alias("platform"),
        )
        .with_columns(
            (pl.col("email").is_not_null() & (draw("email_consent") < 0.88)).alias("email_consent"),
            (
                (pl.col("_tokens") > 0)
                & (draw("push_consent") < pl.when(pl.col("platform") == "ios").then(0.62).otherwise(0.9))
            ).alias("push_consent"),
        )
        .drop("_day", "_offset")
    )
    return users.join(_push_tokens(users, seed=seed), on="_uid", how="left", maintain_order="left").with_columns(
        pl.col("push_tokens").fill_null(pl.lit([], dtype=pl.List(pl.String())))
    )


def _push_tokens(users: pl.DataFrame, *, seed: int) -> pl.DataFrame:
    """Each token holder's list of tokens; built only for holders since a token costs 78 lookups."""
    holders = users.lazy().filter(pl.col("_tokens") > 0).select("_uid", pl.int_ranges(0, pl.col("_tokens")).alias("_k"))
    return (
        push_tokens(holders.explode("_k"), seed=seed)
        .group_by("_uid", maintain_order=True)
        .agg(pl.col("push_token").alias("push_tokens"))
        .collect()
    )


PUBLIC_COLUMNS = (
    "user_id", "email", "push_tokens", "timezone", "locale", "country", "email_consent", "push_consent",
    "signed_up_at", "plan", "app_version", "platform",
)  # fmt: skip
"""What the users file holds: the contract's columns, then free attributes."""
