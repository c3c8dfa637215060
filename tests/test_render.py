"""Message templates: escaping, strictness, validation before sending, sandboxing and versions."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from jinja2.exceptions import SecurityError, UndefinedError

from engine.render import (
    EMAIL_FILES,
    PUSH_BODY_MAX_CHARS,
    PUSH_FILES,
    TemplateRenderError,
    TemplateStore,
    TemplateValidationError,
    money,
)

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

CART: dict[str, Any] = {
    "first_name": "Ada",
    "item_name": "Trail running shoes",
    "item_price": 89.5,
    "cart_value": 1120.0,
    "cart_url": "https://shop.example.com/cart/c-1?utm_source=email&utm_medium=cart",
    "unsubscribe_url": "https://shop.example.com/unsubscribe?u=u-1",
    "brand": "Nudge Shop",
}


@pytest.fixture(scope="module")
def store() -> TemplateStore:
    return TemplateStore(TEMPLATES)


def _make(root: Path, kind: str, name: str, **sources: str) -> None:
    """Write a template folder, filling files not given with a harmless line."""
    folder = root / kind / name
    folder.mkdir(parents=True)
    for filename in EMAIL_FILES if kind == "email" else PUSH_FILES:
        key = filename.removesuffix(".j2").replace(".", "_")  # subject.txt.j2 -> subject_txt
        (folder / filename).write_text(sources.get(key, "hello"), encoding="utf-8")


def test_real_templates_validate_against_a_sample_context(store: TemplateStore) -> None:
    email = store.validate_email("cart_reminder", CART).render(CART)
    push = store.validate_push("cart_push", CART).render(CART)

    assert email.subject == "Ada, you left something in your cart"
    assert "Hi Ada," in email.text
    assert "Trail running shoes - $89.50" in email.text
    assert "$1,120.00" in email.html
    assert 'href="https://shop.example.com/cart/c-1?utm_source=email&amp;utm_medium=cart"' in email.html
    assert push.title == "Still thinking about Trail running shoes?"
    assert push.body == "Ada, your cart at Nudge Shop is saved: $1,120.00 total. Tap to check out."


@pytest.mark.parametrize("first_name", ["", "   "])
def test_empty_first_name_greets_nicely(store: TemplateStore, first_name: str) -> None:
    context = {**CART, "first_name": first_name}

    email = store.email("cart_reminder").render(context)
    push = store.push("cart_push").render(context)

    assert email.subject == "You left something in your cart"
    assert email.text.startswith("Hi there,\n")
    assert "Hi there, your cart is saved" in email.html
    assert push.body.startswith("Your cart at Nudge Shop")


def test_autoescape_applies_to_html_only(store: TemplateStore) -> None:
    email = store.email("cart_reminder").render({**CART, "first_name": "<b>Tom & Jerry</b>"})

    assert "Hi &lt;b&gt;Tom &amp; Jerry&lt;/b&gt;," in email.html
    assert "<b>Tom" not in email.html
    assert email.text.startswith("Hi <b>Tom & Jerry</b>,")
    assert email.subject == "<b>Tom & Jerry</b>, you left something in your cart"


def test_missing_variable_raises_at_render(store: TemplateStore) -> None:
    context = {k: v for k, v in CART.items() if k != "brand"}

    with pytest.raises(TemplateRenderError) as raised:
        store.email("cart_reminder").render(context)

    assert raised.value.file == "email/cart_reminder/body.html.j2"
    assert "'brand' is undefined" in raised.value.message
    assert isinstance(raised.value.__cause__, UndefinedError)


def test_validation_names_the_file_and_every_undeclared_variable(tmp_path: Path) -> None:
    _make(tmp_path, "email", "promo", body_txt="{{ greeting }} {{ nickname }}, {% for x in items %}{{ x }}{% endfor %}")

    with pytest.raises(TemplateValidationError) as raised:
        TemplateStore(tmp_path).validate_email("promo", {"items": ["a"]})

    assert str(raised.value) == "email/promo/body.txt.j2: undefined variable(s): greeting, nickname"


def test_validation_renders_the_sample_to_catch_missing_attributes(tmp_path: Path) -> None:
    _make(tmp_path, "push", "hello", title_txt="Hi\n{{ user.nickname }}")

    with pytest.raises(TemplateValidationError) as raised:
        TemplateStore(tmp_path).validate_push("hello", {"user": {"name": "Ada"}})

    assert raised.value.file == "push/hello/title.txt.j2"
    assert raised.value.message == "line 2: UndefinedError: 'dict object' has no attribute 'nickname'"


@pytest.mark.parametrize(
    ("setup", "path"),
    [
        (lambda root: None, "email/gone"),
        (lambda root: (root / "email" / "gone").mkdir(parents=True), "email/gone/subject.txt.j2"),
    ],
)
def test_missing_folder_or_file_is_named_relative_to_the_root(tmp_path: Path, setup: Any, path: str) -> None:
    setup(tmp_path)

    with pytest.raises(TemplateValidationError) as raised:
        TemplateStore(tmp_path).email("gone")

    assert raised.value.file == path


def test_template_names_cannot_leave_their_folder(tmp_path: Path) -> None:
    with pytest.raises(TemplateValidationError, match="template names are"):
        TemplateStore(tmp_path).email("../push/x")


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    _make(tmp_path, "email", "broken", body_txt="line one\n{% if x %}never closed")

    with pytest.raises(TemplateValidationError, match=r"^email/broken/body\.txt\.j2: line 2: Unexpected end"):
        TemplateStore(tmp_path).email("broken")


def test_includes_are_refused_because_the_version_would_not_cover_them(tmp_path: Path) -> None:
    (tmp_path / "footer.txt.j2").write_text("bye", encoding="utf-8")
    _make(tmp_path, "push", "p", body_txt="{% include 'footer.txt.j2' %}")

    with pytest.raises(TemplateValidationError, match="include/extends/import are not supported"):
        TemplateStore(tmp_path).push("p")


def test_sandbox_escape_is_a_render_error(tmp_path: Path) -> None:
    _make(tmp_path, "push", "evil", body_txt="{{ ''.__class__.__mro__[1].__subclasses__() }}")

    with pytest.raises(TemplateRenderError) as raised:
        TemplateStore(tmp_path).push("evil").render({})

    assert raised.value.file == "push/evil/body.txt.j2"
    assert isinstance(raised.value.__cause__, SecurityError)


def test_a_template_cannot_mutate_the_context(tmp_path: Path) -> None:
    _make(tmp_path, "push", "mutate", body_txt="{{ items.append(1) }}")
    items: list[int] = []

    with pytest.raises(TemplateRenderError):
        TemplateStore(tmp_path).push("mutate").render({"items": items})

    assert items == []


def test_subject_is_one_clean_line(tmp_path: Path) -> None:
    _make(tmp_path, "email", "s", subject_txt="  {{ a }}   {{ b }}\n")
    email = TemplateStore(tmp_path).email("s")

    assert email.render({"a": "Big\tsale", "b": "today"}).subject == "Big sale today"
    with pytest.raises(TemplateRenderError, match="must render to one line"):
        email.render({"a": "Hi\r\nBcc: someone@example.com", "b": ""})


def test_push_over_the_length_limit_or_blank_is_refused(tmp_path: Path) -> None:
    _make(tmp_path, "push", "p", body_txt="{{ text }}")
    push = TemplateStore(tmp_path).push("p")

    with pytest.raises(TemplateRenderError, match=f"more than {PUSH_BODY_MAX_CHARS}"):
        push.render({"text": "x" * (PUSH_BODY_MAX_CHARS + 1)})
    with pytest.raises(TemplateRenderError) as raised:
        push.render({"text": " \n "})
    assert str(raised.value) == "push/p/body.txt.j2: rendered blank"


def test_version_hashes_the_files_and_changes_with_them(tmp_path: Path) -> None:
    _make(tmp_path, "push", "p", body_txt="one")
    before = TemplateStore(tmp_path).push("p").version

    assert TemplateStore(tmp_path).push("p").version == before
    (tmp_path / "push" / "p" / "body.txt.j2").write_text("two", encoding="utf-8")
    assert TemplateStore(tmp_path).push("p").version != before


def test_templates_are_compiled_once_per_store(store: TemplateStore) -> None:
    assert store.email("cart_reminder").html.template is store.email("cart_reminder").html.template


def test_rendering_is_deterministic(store: TemplateStore) -> None:
    first = store.email("cart_reminder").render(CART)

    assert TemplateStore(TEMPLATES).email("cart_reminder").render(dict(reversed(CART.items()))) == first
    assert store.email("cart_reminder").version == TemplateStore(TEMPLATES).email("cart_reminder").version


@pytest.mark.parametrize(
    ("value", "currency", "shown"),
    [
        (1234.5, "USD", "$1,234.50"),
        (0.005, "USD", "$0.01"),
        (1.005, "USD", "$1.01"),
        (-3, "USD", "-$3.00"),
        (-0.001, "USD", "$0.00"),
        (Decimal("19.99"), "EUR", "€19.99"),
        (1234.5, "JPY", "¥1,235"),
    ],
)
def test_money_formats_without_locale(value: Any, currency: str, shown: str) -> None:
    assert money(value, currency) == shown


@pytest.mark.parametrize(
    ("value", "currency", "error"),
    [
        ("12", "USD", TypeError),
        (True, "USD", TypeError),
        (None, "USD", TypeError),
        (float("nan"), "USD", ValueError),
        (float("-inf"), "USD", ValueError),
        (Decimal("NaN"), "USD", ValueError),
        (Decimal("sNaN"), "USD", ValueError),  # unhashable: refused before the cache sees it
        (1, "XYZ", ValueError),
    ],
)
def test_money_refuses_what_it_cannot_format(value: Any, currency: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        money(value, currency)


def test_money_gives_equal_amounts_of_any_type_the_same_text_and_refuses_again_after_a_refusal() -> None:
    """Formatting is cached: the cache must neither mix types up nor remember a refusal as an answer."""
    assert money(2) == money(2.0) == money(Decimal("2")) == money(Decimal("2.000")) == "$2.00"
    assert [money(0.125), money(0.125)] == ["$0.13", "$0.13"]
    for _ in range(2):
        with pytest.raises(TypeError):
            money("2")


def test_jinja_globals_stay_available_to_compiled_templates(tmp_path: Path) -> None:
    """Templates get a plain copy of the environment's globals (a ChainMap costs half a render)."""
    _make(
        tmp_path,
        "push",
        "g",
        body_txt="{% for i in range(3) %}{{ i }}{% endfor %}{% set ns = namespace(n=1) %}{{ ns.n }}",
    )

    assert TemplateStore(tmp_path).push("g").render({}).body == "0121"


def test_a_filter_error_is_a_render_error_not_a_blank(store: TemplateStore) -> None:
    with pytest.raises(TemplateRenderError, match=r"body.html.j2: line \d+: TypeError: money\(\) needs a number"):
        store.email("cart_reminder").render({**CART, "item_price": None})
