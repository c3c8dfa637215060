"""Send experiments: a send node's variants, assigned like a split and recorded on every message."""

from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from engine.definitions import load_definitions
from engine.outbox import plan_outbox
from engine.render import TemplateStore
from engine.yaml_source import DefinitionError
from models.journeys import JourneyDefinition
from tests.journey_harness import T0, Runner, journey

USERS = [f"u{i:04d}" for i in range(4000)]

EXPERIMENT = """
name: experiment
entry: {segment: s}
start: remind
nodes:
  remind:
    send:
      channel: email
      variants:
        - {variant: control, template: plain, weight: %d}
        - {variant: urgent, template: urgent, weight: %d}
        - {variant: discount, template: discount, weight: %d}
    next: done
  done: {exit: completed}
"""

SPLIT = """
name: experiment
entry: {segment: s}
start: remind
nodes:
  remind:
    split:
      - {arm: control, weight: %d, next: done}
      - {arm: urgent, weight: %d, next: done}
      - {arm: discount, weight: %d, next: done}
  done: {exit: completed}
"""


def variants(weights: tuple[int, int, int], users: list[str] = USERS) -> Runner:
    runner = Runner(journey(EXPERIMENT % weights), users=pl.LazyFrame({"user_id": users}))
    runner.run(T0, entered=users)
    return runner


def test_variants_follow_the_weights_and_name_the_template_in_the_reason():
    runner = variants((2, 1, 1))
    counts = Counter(template for _, _, template, _ in runner.sends)
    assert sum(counts.values()) == len(USERS)
    for template, share in (("plain", 0.5), ("urgent", 0.25), ("discount", 0.25)):
        assert abs(counts[template] / len(USERS) - share) < 0.03, counts
    assert any(reason == "planned email urgent (variant urgent)" for reason in runner.transitions["reason"])


def test_a_user_gets_the_variant_a_split_of_the_same_weights_gives_and_keeps_it():
    """Same sticky bucket as a split: a send experiment and a split of the same weights assign users alike."""
    runner = variants((5, 3, 2), USERS[:1000])
    split = Runner(journey(SPLIT % (5, 3, 2)), users=pl.LazyFrame({"user_id": USERS[:1000]}))
    split.run(T0, entered=USERS[:1000])
    by_variant = {user: template for user, _, template, _ in runner.sends}
    by_arm = dict(split.state.select("user_id", "arm").iter_rows())
    assert by_variant == {user: {"control": "plain"}.get(arm, arm) for user, arm in by_arm.items()}
    again = variants((5, 3, 2), USERS[:1000])
    assert {user: template for user, _, template, _ in again.sends} == by_variant


def test_every_planned_message_records_its_variant_skipped_ones_included():
    """Intent to treat: a user the controls hold back stays in the arm they were assigned."""
    runner = Runner(journey(EXPERIMENT % (1, 1, 1)), users=pl.LazyFrame({"user_id": USERS[:300]}))
    _, result = runner.run(T0, entered=USERS[:300])
    contacts = pl.LazyFrame(
        {
            "user_id": USERS[:300],
            "email": [None if i % 3 == 0 else f"{user}@example.com" for i, user in enumerate(USERS[:300])],
            "email_consent": [True] * 300,
            "push_tokens": [[]] * 300,
            "push_consent": [False] * 300,
        }
    )
    outbox = plan_outbox(result.sends, contacts, run_id="r", as_of=T0)
    assert outbox.height == 300 and outbox.get_column("variant").null_count() == 0
    skipped = outbox.filter(pl.col("status") == "skipped")
    assert skipped.height == 100 and set(skipped.get_column("variant")) == {"control", "urgent", "discount"}
    names = {"plain": "control", "urgent": "urgent", "discount": "discount"}
    assert (outbox.get_column("template").replace_strict(names) == outbox.get_column("variant")).all()


@pytest.mark.parametrize(
    ("send", "message"),
    [
        ({"channel": "email"}, "either one `template` or a list of `variants`"),
        (
            {"channel": "email", "template": "a", "variants": [{"variant": "x", "template": "a"}] * 2},
            "either one `template` or a list of `variants`",
        ),
        ({"channel": "email", "variants": [{"variant": "x", "template": "a"}] * 2}, "variant names must differ"),
        (
            {"channel": "email", "variants": [{"variant": f"v{i}", "template": "a"} for i in range(17)]},
            "at most 16 items",
        ),
        ({"channel": "email", "variants": [{"variant": "x", "template": "a"}]}, "at least 2 items"),
    ],
)
def test_a_send_with_no_template_or_too_many_variants_is_refused(send: dict, message: str):
    definition = {
        "name": "j",
        "entry": {"segment": "s"},
        "start": "go",
        "nodes": {"go": {"send": send, "next": "done"}, "done": {"exit": "completed"}},
    }
    with pytest.raises(ValidationError, match=message):
        JourneyDefinition.model_validate(definition)


def test_a_broken_variant_template_is_refused_naming_the_variant(tree: Path):
    """The shipped cart journey is an experiment; its second variant's template reads an unknown variable."""
    body = tree / "templates/email/cart_reminder_saved/body.html.j2"
    body.write_text(body.read_text() + "\n{{ coupon_code }}\n")
    with pytest.raises(DefinitionError) as caught:
        load_definitions(tree / "definitions", TemplateStore(tree / "templates"))
    [problem] = [str(p) for p in caught.value.problems]
    assert problem.startswith("journeys/abandoned_cart.yaml:")
    assert "nodes.email_reminder.send.variants.1.template" in problem and "coupon_code" in problem


def test_every_variant_template_is_versioned_for_the_run_record(tree: Path):
    definitions = load_definitions(tree / "definitions", TemplateStore(tree / "templates"))
    assert {"templates/email/cart_reminder", "templates/email/cart_reminder_saved"} <= set(definitions.versions)
