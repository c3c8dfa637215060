"""Adaptive allocation of a send experiment (Thompson sampling), run after run against a database.

A simulated experiment: each daily run a new cohort enters a journey whose send node has three variants, and
some earlier users re-enter; after each run, users convert at a rate set by the variant they were sent (`saved`
twice the control). Each run draws its shares through `engine.allocation` from what earlier runs recorded in
the outbox, as the pipeline does, and the journey assigns with them through `run_journey`.
"""

import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError
from sqlalchemy import select

from engine.allocation import draw_shares, thompson_experiments, thompson_shares
from engine.db import connect, insert_new
from engine.definitions import Definitions, load_definitions
from engine.experiments import assignments, expected_users, outcomes, report_experiments, settled_results
from engine.journey_nodes import ASSIGNED_SCHEMA, ThompsonShares, send_variants
from engine.journey_state import INSTANCE_SCHEMA, KNOWN_SCHEMA, TRANSITION_SCHEMA, Advance
from engine.journeys import run_journey
from engine.outbox import plan_outbox
from engine.pipeline import RunContext, advance_journeys, ingest, recompute_segments
from engine.render import TemplateStore
from engine.sample.generate import generate
from engine.settings import REPO_ROOT, EngineSettings
from engine.stats.experiment import analyze
from models.journeys import JourneyDefinition
from models.tables import JourneyTransition, OutboxMessage, VariantAllocation
from tests.journey_harness import T0, Event, behaviour, journey

D = timedelta(days=1)
START = date(2026, 9, 1)
COHORT = 500
RUNS = 8
RATES = {"control": 0.05, "saved": 0.10, "urgent": 0.04}
RETURNING = [f"c0-{i:03d}" for i in range(150)]
"""Users of the first cohort who re-enter at every run from the third on."""
JOURNEY = """
name: adaptive
goal: {event: purchase, within: 12h}
entry: {segment: s}
start: remind
nodes:
  remind:
    send:
      channel: email
      allocation: thompson
      min_share: 0.1
      promotion: {min_users_per_arm: 100}
      variants:
        - {variant: control, template: plain}
        - {variant: saved, template: saved}
        - {variant: urgent, template: urgent}
    next: done
  done: {exit: completed}
"""


def cohort(run: int) -> list[str]:
    return [f"c{run}-{i:03d}" for i in range(COHORT)]


def contacts(users: list[str]) -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "user_id": users,
            "email": [f"{user}@example.com" for user in users],
            "email_consent": [True] * len(users),
            "push_tokens": [[]] * len(users),
            "push_consent": [False] * len(users),
        }
    )


@dataclass
class Experiment:
    """The journey's state in memory, its outbox and shares in a SQLite database, conversions as events."""

    definition: JourneyDefinition
    url: str
    state: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=INSTANCE_SCHEMA))
    transitions: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=TRANSITION_SCHEMA))
    events: list[Event] = field(default_factory=list)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(11))

    def step(self, as_of: datetime, entered: list[str], *, store: bool = True) -> Advance:
        """One run: shares, then the journey, then its outbox rows written (unless a dry run)."""
        seen = behaviour(self.events, as_of)
        shares = thompson_shares(
            connect(self.url), self.definition, events=seen.events, as_of=as_of, run_id=f"r{as_of:%d}", store=store
        )
        _, result = run_journey(
            self.definition,
            "v1",
            entered=pl.Series(entered, dtype=pl.String),
            known=self.state.select(KNOWN_SCHEMA.names()),
            active=self.state.filter(pl.col("status") == "active"),
            users=pl.LazyFrame({"user_id": entered}),
            behaviour=seen,
            memberships={},
            thompson=shares,
        )
        if store:
            outbox = plan_outbox(result.sends, contacts(entered), run_id=f"r{as_of:%d}", as_of=as_of)
            with connect(self.url).begin() as conn:
                insert_new(conn, OutboxMessage.__table__, outbox.drop("priority").to_dicts())
        return result

    def run(self, as_of: datetime, entered: list[str]) -> Advance:
        """A run that goes through: state kept, and the users sent a variant convert at its rate."""
        result = self.step(as_of, entered)
        self.state = pl.concat(
            [self.state.join(result.instances.select("instance_id"), on="instance_id", how="anti"), result.instances]
        )
        self.transitions = pl.concat([self.transitions, result.transitions])
        for user, variant in result.sends.select("user_id", "variant").iter_rows():
            if self.rng.random() < RATES[variant]:
                self.events.append((user, "purchase", as_of + timedelta(hours=int(self.rng.integers(1, 12)))))
        return result

    def table(self, model: type) -> pl.DataFrame:
        with connect(self.url).connect() as conn:
            rows = conn.execute(select(model.__table__)).mappings().all()  # type: ignore[attr-defined]
        return pl.DataFrame([dict(row) for row in rows], infer_schema_length=None)

    def shares(self) -> pl.DataFrame:
        """`as_of, control, saved, urgent`: the stored shares, one row per run."""
        history = self.table(VariantAllocation).sort("as_of", "variant")
        return history.pivot("variant", index="as_of", values="share").sort("as_of")


def entrants(run: int) -> list[str]:
    return cohort(run) + (RETURNING if run >= 2 else [])


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    url = f"sqlite:///{tmp_path_factory.mktemp('allocation') / 'state.db'}"
    world = Experiment(journey(JOURNEY), url)
    for run in range(RUNS):
        world.run(T0 + run * D, entrants(run))
    return world


def test_the_shares_move_towards_the_better_variant_and_never_below_the_floor(experiment: Experiment):
    shares = experiment.shares()
    assert shares.height == RUNS
    first = shares.row(0, named=True)
    assert first["control"] == first["saved"] == first["urgent"] == pytest.approx(1 / 3), "no result yet: weights"
    saved = shares.get_column("saved").to_list()
    assert all(later > earlier - 0.05 for earlier, later in pairwise(saved)), saved
    assert saved[1] < 0.7 < min(saved[-3:]), f"moved run by run, not at once: {saved}"
    assert shares.select("control", "saved", "urgent").min_horizontal().min() >= 0.1 - 1e-12
    assert (shares.select(pl.sum_horizontal("control", "saved", "urgent")).to_series() - 1).abs().max() < 1e-9


def test_new_users_are_assigned_in_the_shares_of_their_run(experiment: Experiment):
    outbox = experiment.table(OutboxMessage)
    shares = {row["as_of"]: row for row in experiment.shares().iter_rows(named=True)}
    for run in range(RUNS):
        as_of = T0 + run * D
        new = outbox.filter(pl.col("as_of") == as_of, pl.col("user_id").is_in(cohort(run)))
        assert new.height == COHORT
        for variant in RATES:
            observed = new.filter(pl.col("variant") == variant).height / COHORT
            assert abs(observed - shares[as_of][variant]) < 0.07, (run, variant, observed, shares[as_of])


def test_a_user_assigned_earlier_keeps_the_variant_whatever_the_shares_do(experiment: Experiment):
    outbox = experiment.table(OutboxMessage).filter(pl.col("user_id").is_in(RETURNING))
    assert outbox.group_by("user_id").len().get_column("len").min() == RUNS - 1  # first run, then six re-entries
    assert outbox.group_by("user_id").agg(pl.col("variant").n_unique()).get_column("variant").max() == 1
    first = dict(outbox.filter(pl.col("as_of") == T0).select("user_id", "variant").iter_rows())
    at_node = pl.DataFrame({"instance_id": RETURNING, "node": "remind", "user_id": RETURNING})
    latest = experiment.shares().row(-1, named=True)
    shares = ThompsonShares({"remind": {v: latest[v] for v in RATES}}, pl.DataFrame(schema=ASSIGNED_SCHEMA))
    bucketed = dict(send_variants(experiment.definition, at_node, shares).select("instance_id", "_variant").iter_rows())
    moved = [user for user in RETURNING if bucketed[user] != first[user]]
    assert len(moved) > 30, "the shares moved enough that bucketing them again would change many variants"
    sent = experiment.transitions.filter(pl.col("user_id") == moved[0], pl.col("from_node") == "remind")
    reasons = sent.sort("at").get_column("reason").to_list()
    assert len(reasons) == RUNS - 1 and all(f"(variant {first[moved[0]]}, " in reason for reason in reasons)
    assert reasons[0].endswith(", share 33.3%)") and all(r.endswith(", kept from an earlier run)") for r in reasons[1:])


def test_each_reason_names_the_variant_and_the_share_it_was_drawn_with(experiment: Experiment):
    newcomer = cohort(RUNS - 1)
    latest = experiment.shares().row(-1, named=True)
    planned = experiment.transitions.filter(pl.col("user_id").is_in(newcomer), pl.col("from_node") == "remind")
    expected = {f"(variant {v}, share {latest[v]:.1%})" for v in RATES}
    assert {reason[reason.index("(") :] for reason in planned.get_column("reason")} == expected


def test_rerunning_an_as_of_reuses_its_shares_and_plans_the_same(experiment: Experiment, tmp_path: Path):
    """A redo over the state before the last run, after conversions arrived that would change a fresh draw."""
    last = T0 + (RUNS - 1) * D
    before = experiment.state.filter(pl.col("entered_at") < last)
    stored = experiment.table(VariantAllocation).sort("as_of", "variant")
    redo = Experiment(experiment.definition, experiment.url, state=before, events=list(experiment.events))
    planned = redo.step(last, entrants(RUNS - 1))
    controls = experiment.table(OutboxMessage).filter(pl.col("variant") == "control", pl.col("as_of") < last)
    late = [(user, "purchase", at + timedelta(hours=1)) for user, at in controls.select("user_id", "as_of").iter_rows()]
    again = Experiment(experiment.definition, experiment.url, state=before, events=experiment.events + late)
    [adaptive] = thompson_experiments(experiment.definition)
    fresh = draw_shares(connect(experiment.url), adaptive, events=behaviour(again.events, last).events, as_of=last)
    assert max(fresh, key=lambda row: row["share"])["variant"] == "control", "a fresh draw would now favour control"
    replanned = again.step(last, entrants(RUNS - 1))
    for part in ("instances", "transitions", "sends"):
        assert_frame_equal(getattr(replanned, part), getattr(planned, part))
    assert_frame_equal(experiment.table(VariantAllocation).sort("as_of", "variant"), stored)
    after = Experiment(experiment.definition, experiment.url, state=experiment.state, events=again.events)
    assert after.step(last, entrants(RUNS - 1)).transitions.is_empty()


def test_a_dry_run_draws_without_storing_and_a_stored_draw_is_never_redrawn(database_url: str):
    """On both databases: a dry run's shares are the ones the real run then stores, and a later call for the same
    as_of, with other results in, reads them back together with who was assigned before."""
    world = Experiment(journey(JOURNEY), database_url)
    for run in range(3):
        world.run(T0 + run * D, entrants(run))
    as_of = T0 + 3 * D
    events = behaviour(world.events, as_of).events
    dry = thompson_shares(connect(world.url), world.definition, events=events, as_of=as_of, run_id="dry", store=False)
    assert dry is not None and world.shares().height == 3
    world.run(as_of, entrants(3))
    stored = world.shares().row(-1, named=True)
    assert {variant: stored[variant] for variant in RATES} == dry.shares["remind"]
    assert dry.shares["remind"]["saved"] > 0.5
    everyone_converted = [(user, "purchase", T0 + timedelta(hours=1)) for user in cohort(0)]
    later = behaviour(world.events + everyone_converted, as_of).events
    again = thompson_shares(connect(world.url), world.definition, events=later, as_of=as_of, run_id="x", store=True)
    assert again is not None and again.shares == dry.shares and world.shares().height == 4
    assert again.assigned.height == 3 * COHORT and set(again.assigned.get_column("node")) == {"remind"}
    assert_frame_equal(again.assigned, dry.assigned)


def test_the_report_promotes_the_winner_and_checks_the_sample_ratio_against_the_shares(experiment: Experiment):
    events = behaviour(experiment.events, T0 + (RUNS + 1) * D).events
    database = connect(experiment.url)
    [early] = report_experiments(database, [experiment.definition], events=events, as_of=T0)
    assert "No variant to promote yet" in early.markdown() and "an arm has 0 users, fewer than 100" in early.markdown()
    [report] = report_experiments(database, [experiment.definition], events=events, as_of=T0 + RUNS * D)
    markdown = report.markdown()
    assert "**promote saved**: every condition holds" in markdown
    assert f"shares of the last {RUNS} of {RUNS} runs" in markdown and "| 2026-09-10 06:00 | 33.3% |" in markdown
    assert not report.result.srm.flagged
    [adaptive] = thompson_experiments(experiment.definition)
    assigned = assignments(database, adaptive, as_of=T0 + RUNS * D)
    rows = outcomes(assigned, events, adaptive.goal)
    configured = analyze(rows, control="control", expected_weights=adaptive.weights)
    assert configured.srm.flagged, "against the configured weights, adapting looks like a broken assignment"


def test_a_fixed_send_beside_a_thompson_one_ignores_earlier_assignments():
    definition = journey(
        JOURNEY.replace("next: done\n  done:", "next: fixed\n  done:").replace(
            "  done: {exit: completed}",
            "  fixed:\n    send:\n      channel: email\n      variants:\n"
            "        - {variant: a, template: plain}\n        - {variant: b, template: saved}\n"
            "    next: done\n  done: {exit: completed}",
        )
    )
    users = cohort(0)[:200]
    at_fixed = pl.DataFrame({"instance_id": users, "node": "fixed", "user_id": users})
    earlier = pl.DataFrame({"node": "fixed", "user_id": users, "variant": "a"}, schema=ASSIGNED_SCHEMA)
    shares = ThompsonShares({"remind": {"control": 0.1, "saved": 0.8, "urgent": 0.1}}, earlier)
    assert_frame_equal(send_variants(definition, at_fixed, shares), send_variants(definition, at_fixed))
    assert send_variants(definition, at_fixed).get_column("_variant").n_unique() == 2
    assert [experiment.node for experiment in thompson_experiments(definition)] == ["remind"]


def test_a_journey_without_thompson_nodes_reads_no_shares(tmp_path: Path):
    settings = "      allocation: thompson\n      min_share: 0.1\n      promotion: {min_users_per_arm: 100}\n"
    fixed = journey(JOURNEY.replace(settings, ""))
    database = connect(f"sqlite:///{tmp_path / 'state.db'}")
    events = behaviour([], T0).events
    assert thompson_shares(database, fixed, events=events, as_of=T0, run_id="r", store=True) is None
    with database.connect() as conn:
        assert conn.execute(select(VariantAllocation.__table__)).all() == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("      allocation: thompson\n", "      allocation: thompson\n      template: plain\n"), "not both"),
        (("      allocation: thompson\n", ""), "only apply to `allocation: thompson`"),
        (("min_share: 0.1", "min_share: 0.34"), "leaves nothing to adapt"),
        (("min_share: 0.1", "min_share: 0"), "greater than 0"),
    ],
)
def test_thompson_settings_are_checked_with_the_definition(change: tuple[str, str], message: str):
    with pytest.raises(ValidationError, match=message):
        journey(JOURNEY.replace(*change))


def test_thompson_without_variants_or_a_goal_is_refused():
    single = {"channel": "email", "template": "plain", "allocation": "thompson"}
    nodes = {"go": {"send": single, "next": "end"}, "end": {"exit": "done"}}
    with pytest.raises(ValidationError, match="shares traffic between `variants`"):
        JourneyDefinition.model_validate({"name": "j", "entry": {"segment": "s"}, "start": "go", "nodes": nodes})
    with pytest.raises(ValidationError, match="allocation: thompson adapts to the journey's goal: add one"):
        journey(JOURNEY.replace("goal: {event: purchase, within: 12h}\n", ""))


def test_only_users_whose_attribution_window_has_closed_count_towards_the_shares():
    """A user still inside the window may yet convert: counting them as not converted would penalize the variant
    that lately got more users, the one the shares favour."""
    [adaptive] = thompson_experiments(journey(JOURNEY))
    moment = pl.Datetime("us", "UTC")
    assigned = pl.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "arm": ["saved", "saved", "control", "urgent"],
            "assigned_at": [T0 - timedelta(hours=h) for h in (13, 12, 30, 1)],
        },
        schema={"user_id": pl.String, "arm": pl.String, "assigned_at": moment},
    )
    events = behaviour([("a", "purchase", T0 - timedelta(hours=2)), ("d", "purchase", T0 - timedelta(minutes=1))], T0)
    conversions, users = settled_results(assigned, events.events, adaptive, as_of=T0)
    assert (conversions, users) == ([0, 1, 0], [1, 1, 0]), "b (exactly 12h) and d (1h) have not settled"


def test_the_sample_ratio_expected_of_each_arm_follows_the_shares_of_the_run_that_assigned_its_users():
    [adaptive] = thompson_experiments(journey(JOURNEY.replace("template: saved}", "template: saved, weight: 2}")))
    moment = pl.Datetime("us", "UTC")
    assigned = pl.DataFrame(
        {"user_id": ["a", "b", "c", "d", "e", "f"], "arm": ["control"] * 6, "assigned_at": [T0] * 4 + [T0 + D] * 2},
        schema={"user_id": pl.String, "arm": pl.String, "assigned_at": moment},
    )
    history = pl.DataFrame(
        {"as_of": [T0 + D] * 3, "variant": ["control", "saved", "urgent"], "share": [0.1, 0.8, 0.1]},
        schema={"as_of": moment, "variant": pl.String, "share": pl.Float64},
    )
    expected = expected_users(assigned, history, adaptive)  # T0 has no stored shares: assigned while fixed, 1:2:1
    assert expected == pytest.approx({"control": 4 / 4 + 0.2, "saved": 4 / 2 + 1.6, "urgent": 4 / 4 + 0.2})


def test_the_starting_shares_keep_the_floor_and_share_the_rest_by_weight():
    definition = journey(JOURNEY.replace("template: saved}", "template: saved, weight: 6}"))
    spec = definition.nodes["remind"].send  # type: ignore[union-attr]
    assert spec.starting_shares == pytest.approx(
        {"control": 0.1 + 0.7 / 8, "saved": 0.1 + 0.7 * 6 / 8, "urgent": 0.1 + 0.7 / 8}
    )


@pytest.fixture(scope="module")
def pipeline_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[EngineSettings, Definitions]:
    """Generated sample data, the shipped cart journey's email experiment made adaptive with a one-day goal."""
    home = tmp_path_factory.mktemp("adaptive-pipeline")
    generate(home / "snapshot", users=400, days=13, start=START, seed=5)
    definitions_dir = home / "definitions"
    shutil.copytree(REPO_ROOT / "definitions", definitions_dir)
    cart = definitions_dir / "journeys" / "abandoned_cart.yaml"
    text = cart.read_text().replace("within: 7d", "within: 1d")
    cart.write_text(
        text.replace(
            "      channel: email\n      variants:", "      channel: email\n      allocation: thompson\n      variants:"
        )
    )
    settings = EngineSettings(home=home, snapshot_dir=home / "snapshot", definitions_dir=definitions_dir)
    return settings, load_definitions(definitions_dir, TemplateStore(settings.templates_dir))


def advance(settings: EngineSettings, definitions: Definitions, as_of: datetime, run_id: str, *, dry: bool = False):
    ctx = RunContext(run_id=run_id, as_of=as_of, dry_run=dry, settings=settings)
    ingest(ctx)
    database = connect(settings.database)
    return advance_journeys(ctx, definitions, database, recompute_segments(ctx, definitions, database))


def test_the_pipeline_draws_each_runs_shares_once_and_plans_with_them(pipeline_world):
    settings, definitions = pipeline_world
    runs = [datetime.combine(START + timedelta(days=9 + i), time(6), UTC) for i in range(4)]
    world = Experiment(definitions.journeys["abandoned_cart"], settings.database)
    for number, as_of in enumerate(runs):
        advance(settings, definitions, as_of, f"run-{number}")
    history = world.table(VariantAllocation).sort("as_of", "variant")
    assert history.get_column("as_of").unique().to_list() == runs
    assert history.filter(pl.col("as_of") < runs[3]).get_column("share").to_list() == [0.5] * 6, "nothing settled"
    drawn = history.filter(pl.col("as_of") == runs[3])
    assert drawn.get_column("users").sum() > 0 and drawn.get_column("chance_to_be_best").null_count() == 0
    outbox = world.table(OutboxMessage).filter(pl.col("node") == "email_reminder")
    assert outbox.height > 20 and outbox.group_by("user_id").agg(pl.col("variant").n_unique())["variant"].max() == 1
    shares = {(at, variant): share for at, variant, share in history.select("as_of", "variant", "share").iter_rows()}
    sent = world.table(JourneyTransition).filter(pl.col("from_node") == "email_reminder")
    for at, reason in sent.select("at", "reason").iter_rows():
        variant, share = re.fullmatch(r".* \(variant (\w+), share ([\d.]+%)\)", reason).groups()  # type: ignore[union-attr]
        assert share == f"{shares[(at, variant)]:.1%}", reason
    assert sent.filter(pl.col("at") == runs[3]).height > 0

    before = world.table(OutboxMessage).sort("send_key")
    assert all(summary.transitions == 0 for summary in advance(settings, definitions, runs[3], "rerun"))
    assert_frame_equal(world.table(VariantAllocation).sort("as_of", "variant"), history)
    assert_frame_equal(world.table(OutboxMessage).sort("send_key"), before)

    advance(settings, definitions, runs[3] + D, "dry", dry=True)
    assert world.table(VariantAllocation).height == history.height, "a dry run stores no shares"
