"""Delivery controls, applied at planning: whether each planned message goes now, later, or not at all.

`apply_controls` decides per *message*, the user-level send: a push to three device tokens is three outbox rows
but one message, for arbitration and for caps alike. A message is its (`instance_id`, `node`, `as_of`): an
instance passes a given node at most once per run, since every delay is positive. Checks, in this order, the
first that applies giving the skip reason:

1. Rows already skipped at planning (no address, no consent, suppressed) stay as they were.
2. Transactional messages pass every control below and count against no cap. A receipt or a password reset is
   not marketing pressure: holding it out, capping it or delaying it to the morning breaks the product, and
   letting it use up the day's cap would silence the marketing the cap is meant to ration.
3. `control_group`: the user is in the global holdout (a hash of the policy's seed and the user id).
4. `quiet_hours`: it is quiet now in the user's time zone and the channel's window drops. A window that holds
   keeps the message planned with `not_before` at the first instant the local clock reaches the window's end,
   and the message then counts on that local day, the day the user receives it.
5. Per user and channel, messages are admitted in priority order (higher first; ties by journey, node, then
   instance id, so the same inputs always pick the same one). The first message within every cap is kept:
   the ones after it are `lower_priority`, the ones before it carry the first cap they reach, checked as
   `frequency_cap:<channel>:day`, `frequency_cap:<channel>:week`, `journey_cap:<journey>:<channel>:day`,
   `journey_cap:<journey>:<channel>:week`. A journey cap on the top message therefore hands the channel to
   the next journey instead of silencing the user for the run. Days and ISO weeks (Monday start) are the
   user's local calendar, UTC when the time zone is unknown.

Inputs:

- `planned`: this run's outbox rows (`engine.outbox.OUTBOX_COLUMNS`) plus `priority` (int, higher wins) and
  `transactional` (bool), both taken from the journey definitions and never null.
- `users`: `user_id` (unique) and `timezone` (IANA name, null for UTC).
- `history`: outbox rows, one or several per message, that count against caps: accepted or in flight, not
  transactional, with `user_id`, `channel`, `journey`, `instance_id`, `node`, `as_of` and `sent_at`, the UTC
  instant the message was or will be delivered (its `not_before`, else its run's `as_of`). Eight days before
  `as_of` cover any ISO week in any time zone; rows of the messages being planned now are ignored, so a
  replayed run is not capped by its own first attempt.
- `decided` (optional): messages of this same `as_of` that an earlier attempt of the run already kept, with
  `user_id`, `channel`, `journey`, `instance_id`, `node`, `as_of` and their journey's `priority`. A run that
  failed between two journeys' writes is redone with the first journey's messages recorded: they take part in
  arbitration as already kept, so the second journey's messages get the reasons an uninterrupted run gives them
  (`lower_priority` behind a kept message, not a cap it never counted against).

Everything is a frame operation except two steps: the control-group hash (hashlib, one call per user with a
planned message) and the local clock, computed once per distinct time zone.
"""

import functools
import hashlib
from datetime import datetime, timedelta

import polars as pl

from engine.channels.registry import channels
from models.delivery import ControlGroup, DeliveryPolicy, QuietHours, QuietWindow

MESSAGE = ("instance_id", "node", "as_of")
_UTC_INSTANT = pl.Datetime("us", "UTC")
_BUCKETS = 10_000  # control-group buckets: a percent with two decimals is a whole number of them
_CLOCK_SCHEMA = pl.Schema(
    {
        "timezone": pl.String,
        "channel": pl.String,
        "quiet_drop": pl.Boolean,
        "not_before": _UTC_INSTANT,
        "day": pl.Date,
        "week": pl.Date,
    }
)


def apply_controls(
    planned: pl.DataFrame,
    *,
    users: pl.LazyFrame,
    history: pl.DataFrame,
    policy: DeliveryPolicy,
    as_of: datetime,
    decided: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The planned rows in their order, with `status`/`reason` after the controls and `not_before` added.

    `not_before` is null for a message that may go at once, and the end of the quiet window (UTC) for one held.
    """
    _check_planned(planned)
    messages = _marketing_messages(planned, users)
    messages = _skip(messages, _held_out(messages, policy.control_group), "control_group")
    messages = messages.join(
        _local_clock(messages.get_column("timezone").unique().sort().to_list(), policy.quiet_hours, as_of),
        on=["timezone", "channel"],
        how="left",
    )
    messages = _skip(messages, pl.col("quiet_drop"), "quiet_hours")
    messages = _cap_reason(messages, _earlier(messages, history, planned), policy)
    return _write_back(planned, _admit(messages, _already_kept(decided, messages)))


def in_control_group(user_ids: pl.Series, group: ControlGroup) -> pl.Series:
    """Whether each user is in the holdout: SHA-256 of `seed|user_id`, first 8 bytes, modulo 10,000 buckets.

    The same in every process, run and Polars version (unlike `Expr.hash`), and reproducible in a warehouse's
    SQL to measure lift. One hashlib call per user, about 3 µs: 3 s for a million users on two cores.
    """
    prefix = hashlib.sha256(f"{group.seed}|".encode())
    threshold = int(group.percent * _BUCKETS / 100)

    def bucket(user_id: str) -> int:
        digest = prefix.copy()
        digest.update(user_id.encode())
        return int.from_bytes(digest.digest()[:8], "big") % _BUCKETS

    return pl.Series(user_ids.name, [bucket(user_id) < threshold for user_id in user_ids.to_list()], pl.Boolean)


def _check_planned(planned: pl.DataFrame) -> None:
    """A null priority or flag would silently exempt a message or misorder it: refuse it instead."""
    nulls = planned.filter(pl.col("status") == "planned").select(pl.col("priority", "transactional").null_count())
    if nulls.row(0) != (0, 0):
        raise ValueError(f"planned rows need a priority and a transactional flag; nulls: {nulls.to_dicts()[0]}")


def _marketing_messages(planned: pl.DataFrame, users: pl.LazyFrame) -> pl.DataFrame:
    """One row per planned, non-transactional message, with its user's time zone and an empty `reason`."""
    return (
        planned.lazy()
        .filter((pl.col("status") == "planned") & ~pl.col("transactional"))
        .group_by(MESSAGE)
        .agg(pl.col("user_id", "channel", "journey", "priority").first())
        .join(users.select("user_id", "timezone"), on="user_id", how="left")
        .with_columns(pl.col("timezone").fill_null("UTC"), pl.lit(None, pl.String).alias("reason"))
        .collect()
    )


def _skip(messages: pl.DataFrame, condition: pl.Expr, reason: str) -> pl.DataFrame:
    """Give `reason` to the messages that meet `condition` and have no reason yet: the first control wins."""
    hit = pl.col("reason").is_null() & condition.fill_null(False)
    return messages.with_columns(pl.when(hit).then(pl.lit(reason)).otherwise(pl.col("reason")).alias("reason"))


def _held_out(messages: pl.DataFrame, group: ControlGroup | None) -> pl.Expr:
    if group is None:
        return pl.lit(False)
    users = messages.get_column("user_id").unique()
    return pl.col("user_id").is_in(users.filter(in_control_group(users, group)).implode())


def _local_clock(zones: list[str], quiet: QuietHours | None, as_of: datetime) -> pl.DataFrame:
    """Per time zone and channel: dropped for quiet hours, held until when, and the local day and week it counts.

    Quiet hours are read on the local wall clock, so a window is the same local hours whatever the UTC offset
    that day; the end of a held window is found with Polars' time zone database.
    """
    rows = []
    for zone in zones:
        now = _wall_clock(as_of, zone)
        for channel in channels():
            dropped, not_before = _quiet(now, quiet.window(channel) if quiet else None, zone, as_of)
            day = _wall_clock(not_before or as_of, zone).date()
            rows.append((zone, channel, dropped, not_before, day, day - timedelta(days=day.weekday())))
    return pl.DataFrame(rows, schema=_CLOCK_SCHEMA, orient="row")


def _wall_clock(instant: datetime, zone: str) -> datetime:
    """The naive local date and time that `instant` shows in `zone`."""
    local = pl.Series([instant]).dt.convert_time_zone(zone).dt.replace_time_zone(None)
    return local.item()  # type: ignore[no-any-return]


def _quiet(now: datetime, window: QuietWindow | None, zone: str, as_of: datetime) -> tuple[bool, datetime | None]:
    """(dropped, held until) for a message due at `as_of`, when the local time in `zone` is `now`."""
    end = _quiet_end(now, window) if window else None
    if window is None or end is None:
        return False, None
    if window.mode == "drop":
        return True, None
    return False, _first_instant_at(end, zone, after=as_of)


def _quiet_end(now: datetime, window: QuietWindow) -> datetime | None:
    """The local wall time at which the window ends, if the local time `now` is inside it."""
    clock = now.time()
    if window.start < window.end:
        quiet = window.start <= clock < window.end
    else:
        quiet = clock >= window.start or clock < window.end
    if not quiet:
        return None
    return datetime.combine(now.date() + timedelta(days=int(clock >= window.end)), window.end)


@functools.lru_cache(maxsize=4096)
def _first_instant_at(wall: datetime, zone: str, *, after: datetime) -> datetime:
    """The first instant after `after` at which the clock in `zone` shows `wall` or later.

    Usually `wall` itself. When the clock skips it (spring forward) the answer is the first minute after the
    gap; when the clock shows it twice (fall back) it is the first showing after `after`. The candidates are
    every whole minute of the day from `wall`, read both ways: tz database offsets are whole minutes. About
    3 ms a zone, cached, as channels usually share a window.
    """
    walls = pl.datetime_range(wall, wall + timedelta(days=1), "1m", eager=True)
    instants = pl.concat(
        walls.dt.replace_time_zone(zone, ambiguous=side, non_existent="null").dt.convert_time_zone("UTC")
        for side in ("earliest", "latest")
    )
    return instants.filter(instants > after).min()  # type: ignore[return-value]


def _cap_reason(messages: pl.DataFrame, earlier: pl.DataFrame, policy: DeliveryPolicy) -> pl.DataFrame:
    """Add `cap_reason`: the first cap each message would reach on its local day and week (null: none)."""
    for keys, scope in ((["user_id", "channel"], "channel"), (["user_id", "channel", "journey"], "journey")):
        sent = earlier.group_by(keys).agg(
            pl.col("same_day").sum().alias(f"{scope}_day"), pl.len().alias(f"{scope}_week")
        )
        messages = messages.join(sent, on=keys, how="left")
    channel_limits, journey_limits = _limits(policy)
    messages = messages.join(channel_limits, on="channel", how="left").join(
        journey_limits, on=["journey", "channel"], how="left"
    )
    checks = (
        ("channel_day", pl.format("frequency_cap:{}:day", "channel")),
        ("channel_week", pl.format("frequency_cap:{}:week", "channel")),
        ("journey_day", pl.format("journey_cap:{}:{}:day", "journey", "channel")),
        ("journey_week", pl.format("journey_cap:{}:{}:week", "journey", "channel")),
    )
    reached = [pl.when(pl.col(name).fill_null(0) >= pl.col(f"{name}_limit")).then(label) for name, label in checks]
    return messages.with_columns(pl.coalesce(reached).alias("cap_reason"))


def _earlier(messages: pl.DataFrame, history: pl.DataFrame, planned: pl.DataFrame) -> pl.DataFrame:
    """Earlier messages in each candidate's local delivery week: `user_id`, `channel`, `journey`, `same_day`.

    History is the large input, so it is first narrowed to the users and channels with a candidate; each row
    then takes the candidate's time zone and local day. Rows of a message being planned now are dropped: a
    replayed run is not capped by its own first attempt.
    """
    clocks = (
        messages.filter(pl.col("reason").is_null())
        .select("user_id", "channel", "timezone", "day", "week")
        .unique(["user_id", "channel"])
    )
    narrowed = history.join(clocks, on=["user_id", "channel"], how="inner").join(
        planned.select(MESSAGE).unique(), on=list(MESSAGE), how="anti"
    )
    parts = [
        part.with_columns(pl.col("sent_at").dt.convert_time_zone(zone).dt.date().alias("sent_day"))
        for (zone,), part in narrowed.partition_by("timezone", as_dict=True).items()
    ]
    local = pl.concat(parts) if parts else narrowed.with_columns(pl.lit(None, pl.Date).alias("sent_day"))
    return (
        local.filter(_week_start(pl.col("sent_day")) == pl.col("week"))
        .unique(list(MESSAGE))
        .select("user_id", "channel", "journey", (pl.col("sent_day") == pl.col("day")).alias("same_day"))
    )


def _week_start(day: pl.Expr) -> pl.Expr:
    """The Monday that starts the ISO week of `day`."""
    return day - pl.duration(days=day.dt.weekday() - 1)


def _limits(policy: DeliveryPolicy) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The policy's caps as frames: per channel, and per journey and channel."""
    channel = pl.DataFrame(
        [(name, cap.per_day, cap.per_week) for name, cap in policy.caps.items()],
        schema={"channel": pl.String, "channel_day_limit": pl.Int64, "channel_week_limit": pl.Int64},
        orient="row",
    )
    journey = pl.DataFrame(
        [
            (journey, name, cap.per_day, cap.per_week)
            for journey, caps in policy.journey_caps.items()
            for name, cap in caps.items()
        ],
        schema={
            "journey": pl.String,
            "channel": pl.String,
            "journey_day_limit": pl.Int64,
            "journey_week_limit": pl.Int64,
        },
        orient="row",
    )
    return channel, journey


def _already_kept(decided: pl.DataFrame | None, messages: pl.DataFrame) -> pl.DataFrame:
    """Decided messages of the candidates' users and channels, as rows `_admit` ranks but never rewrites."""
    columns = ("user_id", "channel", "journey", "node", "instance_id", "as_of", "priority")
    if decided is None:
        return messages.select(columns).clear()
    return (
        decided.select(columns)
        .unique(list(MESSAGE))
        .join(messages.select(MESSAGE), on=list(MESSAGE), how="anti")
        .join(messages.select("user_id", "channel").unique(), on=["user_id", "channel"], how="semi")
        .cast(messages.select(columns).schema)  # type: ignore[arg-type]
    )


def _admit(messages: pl.DataFrame, kept: pl.DataFrame) -> pl.DataFrame:
    """Per user and channel, in priority order: keep the first message within its caps, skip the rest.

    `kept` messages were admitted by an earlier attempt of this run: they rank like the others and hold the
    channel, and are dropped from the result.
    """
    earlier = kept.with_columns(
        pl.lit(None, pl.String).alias("reason"),
        pl.lit(None, pl.String).alias("cap_reason"),
        pl.lit(True).alias("_kept"),
    )
    candidates = pl.concat([messages.with_columns(pl.lit(False).alias("_kept")), earlier], how="diagonal")
    within = (pl.col("reason").is_null() & pl.col("cap_reason").is_null()).cast(pl.UInt32)
    kept_before = (within.cum_sum() - within).over("user_id", "channel") > 0
    ranked = candidates.sort(
        "user_id", "channel", "priority", "journey", "node", "instance_id",
        descending=[False, False, True, False, False, False],
    )  # fmt: skip
    ranked = _skip(ranked, kept_before, "lower_priority").filter(~pl.col("_kept")).drop("_kept")
    return ranked.with_columns(pl.coalesce("reason", "cap_reason").alias("reason"))


def _write_back(planned: pl.DataFrame, messages: pl.DataFrame) -> pl.DataFrame:
    """Each message's decision onto its planned rows; rows skipped before the controls keep their reason."""
    decisions = messages.select(
        *MESSAGE,
        pl.col("reason").alias("control"),
        pl.when(pl.col("reason").is_null()).then(pl.col("not_before")).alias("not_before"),
    )
    live = pl.col("status") == "planned"
    skip = live & pl.col("control").is_not_null()
    return (
        planned.join(decisions, on=list(MESSAGE), how="left", maintain_order="left")
        .with_columns(
            pl.when(skip).then(pl.lit("skipped")).otherwise(pl.col("status")).alias("status"),
            pl.when(skip).then(pl.col("control")).otherwise(pl.col("reason")).alias("reason"),
            pl.when(live).then(pl.col("not_before")).alias("not_before"),
        )
        .select(*planned.columns, pl.col("not_before").cast(_UTC_INSTANT))
    )
