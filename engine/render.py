"""Render email and push messages from Jinja2 templates, refusing anything that would send a broken message.

A template is a folder of files under the templates root: ``email/<name>/{subject.txt.j2, body.html.j2,
body.txt.j2}`` or ``push/<name>/{title.txt.j2, body.txt.j2}``. Templates run in an immutable sandbox with
``StrictUndefined`` and HTML autoescaping (``.html.j2`` only), so a missing variable or an unsafe attribute
is an error, never a blank or a leak in a sent message. ``validate_email``/``validate_push`` find those
errors before a run sends anything. A channel added by a plugin keeps its templates in ``<channel>/<name>/``
and reads them with ``load`` and ``check``.

Errors::

    MessageTemplateError
     ├── TemplateValidationError   missing file, syntax error, undeclared variable, sample render failed
     └── TemplateRenderError       a render failed or produced an unusable message
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

EMAIL_FILES = ("subject.txt.j2", "body.html.j2", "body.txt.j2")
PUSH_FILES = ("title.txt.j2", "body.txt.j2")

# FCM accepts ~4 KB per message, but devices truncate far earlier (a few lines of body, ~65 title chars on
# Android). These caps only catch a runaway template or value; write for the short limits.
PUSH_TITLE_MAX_CHARS = 200
PUSH_BODY_MAX_CHARS = 1000

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


class MessageTemplateError(Exception):
    """A message template problem; ``file`` is the template file, relative to the templates root."""

    def __init__(self, file: str, message: str) -> None:
        self.file = file
        self.message = message
        super().__init__(f"{file}: {message}")


class TemplateValidationError(MessageTemplateError):
    """The template cannot be used with the declared context; found before anything is sent."""


class TemplateRenderError(MessageTemplateError):
    """Rendering failed or produced an unusable message: the message must not be sent."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class RenderedPush:
    title: str
    body: str


@dataclass(frozen=True)
class TemplateFile:
    """One compiled template file, with the variables it reads from the context."""

    path: str
    template: jinja2.Template
    undeclared: frozenset[str]

    def render(self, context: Mapping[str, Any]) -> str:
        """Render, turning any failure (undefined variable, sandbox refusal, filter error) into ours."""
        try:
            return self.template.render(context)
        except Exception as exc:
            line = _template_line(exc.__traceback__, self.template.filename)
            where = f"line {line}: " if line else ""
            raise TemplateRenderError(self.path, f"{where}{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class EmailTemplate:
    name: str
    version: str
    subject: TemplateFile
    html: TemplateFile
    text: TemplateFile

    def render(self, context: Mapping[str, Any]) -> RenderedEmail:
        return RenderedEmail(
            subject=_render_line(self.subject, context),
            html=_render_body(self.html, context),
            text=_render_body(self.text, context),
        )


@dataclass(frozen=True)
class PushTemplate:
    name: str
    version: str
    title: TemplateFile
    body: TemplateFile

    def render(self, context: Mapping[str, Any]) -> RenderedPush:
        return RenderedPush(
            title=_render_line(self.title, context, PUSH_TITLE_MAX_CHARS),
            body=_render_body(self.body, context, PUSH_BODY_MAX_CHARS),
        )


class TemplateStore:
    """The message templates under one root folder, each compiled once on first use.

    A store is a snapshot: every file is read once, and its version hashes exactly the bytes that were
    compiled. Build a new store to pick up edits.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # Immutable: a template cannot alter a context shared with the next message. No loader: each file
        # is read here exactly once, so a version hashes the very bytes that were compiled.
        self._env = ImmutableSandboxedEnvironment(
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters["money"] = money
        self._cache: dict[str, tuple[str, list[TemplateFile]]] = {}

    def email(self, name: str) -> EmailTemplate:
        """Return the compiled email template ``email/<name>/`` (TemplateValidationError if unusable)."""
        version, (subject, html, text) = self.load("email", name, EMAIL_FILES)
        return EmailTemplate(name, version, subject, html, text)

    def push(self, name: str) -> PushTemplate:
        """Return the compiled push template ``push/<name>/`` (TemplateValidationError if unusable)."""
        version, (title, body) = self.load("push", name, PUSH_FILES)
        return PushTemplate(name, version, title, body)

    def validate_email(self, name: str, declared: Mapping[str, Any]) -> EmailTemplate:
        """Check ``email/<name>/`` against a sample of the context it will get; return it if usable.

        ``declared`` maps every context variable to an example value of the right shape.
        """
        template = self.email(name)
        self.check(declared, [template.subject, template.html, template.text], template.render)
        return template

    def validate_push(self, name: str, declared: Mapping[str, Any]) -> PushTemplate:
        """Check ``push/<name>/`` against a sample of the context it will get; return it if usable."""
        template = self.push(name)
        self.check(declared, [template.title, template.body], template.render)
        return template

    def check(
        self,
        declared: Mapping[str, Any],
        files: list[TemplateFile],
        render: Callable[[Mapping[str, Any]], object],
    ) -> None:
        """Check ``files`` against the sample context ``declared``: statically, naming every unknown variable;
        then ``render(declared)`` once for the rest. Raises TemplateValidationError.

        The sample render catches what names alone cannot, such as ``user.nickname`` on a user without one.
        """
        for file in files:
            unknown = file.undeclared - declared.keys()
            if unknown:
                names = ", ".join(sorted(unknown))
                raise TemplateValidationError(file.path, f"undefined variable(s): {names}")
        try:
            render(declared)
        except TemplateRenderError as exc:
            raise TemplateValidationError(exc.file, exc.message) from exc

    def load(self, kind: str, name: str, filenames: tuple[str, ...]) -> tuple[str, list[TemplateFile]]:
        """The version and compiled files of ``<kind>/<name>/<filename>``: how a channel reads its own template
        parts (``kind`` is the channel's name). TemplateValidationError names the file when one is unusable."""
        key = f"{kind}/{name}"
        if key not in self._cache:
            if not _NAME.fullmatch(name):
                raise TemplateValidationError(key, "template names are lowercase letters, digits, - and _")
            if not (self.root / kind / name).is_dir():
                raise TemplateValidationError(key, "no such template folder")
            digest = hashlib.sha256()
            files = []
            for filename in filenames:
                path = f"{key}/{filename}"
                raw = self._read(path)
                digest.update(f"{filename}\0{len(raw)}\0".encode())
                digest.update(raw)
                files.append(self._compile(path, raw))
            self._cache[key] = (digest.hexdigest(), files)
        return self._cache[key]

    def _read(self, path: str) -> bytes:
        try:
            return (self.root / path).read_bytes()
        except FileNotFoundError:
            raise TemplateValidationError(path, "missing template file") from None

    def _compile(self, path: str, raw: bytes) -> TemplateFile:
        filename = str(self.root / path)
        try:
            ast = self._env.parse(raw.decode("utf-8"), path, filename)
        except UnicodeDecodeError as exc:
            raise TemplateValidationError(path, f"not valid UTF-8: {exc.reason}") from exc
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateValidationError(path, f"line {exc.lineno}: {exc.message}") from exc
        if any(True for _ in jinja2.meta.find_referenced_templates(ast)):
            # The version hashes this folder's files only; a shared include would change messages unseen.
            raise TemplateValidationError(path, "include/extends/import are not supported")
        code = self._env.compile(ast, path, filename)
        # A plain dict, not Jinja's default ChainMap over the environment's globals: each render copies the
        # globals into a fresh context and iterates them again, and through a ChainMap that took half the
        # time of rendering a whole email. The store never changes globals after compiling.
        template = self._env.template_class.from_code(self._env, code, dict(self._env.make_globals(None)))
        undeclared = jinja2.meta.find_undeclared_variables(ast) - self._env.globals.keys()
        return TemplateFile(path, template, frozenset(undeclared))


# symbol and smallest unit
_CURRENCIES = {
    "USD": ("$", Decimal("0.01")),
    "EUR": ("€", Decimal("0.01")),
    "GBP": ("£", Decimal("0.01")),
    "JPY": ("¥", Decimal(1)),
}


_NUMBER_TYPES = (int, float, Decimal)


def money(value: int | float | Decimal, currency: str = "USD") -> str:
    """Format an amount as ``$1,234.50``, the same on every machine.

    Locale-based formatting depends on process-wide state, and a batch must render identically wherever it
    runs. Unknown currencies are refused rather than shown with guessed decimals.
    """
    if isinstance(value, bool) or not isinstance(value, _NUMBER_TYPES):
        raise TypeError(f"money() needs a number, got {type(value).__name__}")
    if currency not in _CURRENCIES:
        raise ValueError(f"money() knows {', '.join(_CURRENCIES)}, not {currency!r}")
    finite = value.is_finite() if isinstance(value, Decimal) else not isinstance(value, float) or math.isfinite(value)
    if not finite:
        raise ValueError(f"money() needs a finite amount, got {value!r}")
    return _money(value, currency)


# Amounts repeat across a send (prices of the same items, the same totals) and each costs a few microseconds
# of Decimal work, called several times per message. `typed`: 1, 1.0 and Decimal(1) stay apart.
@functools.lru_cache(maxsize=65_536, typed=True)
def _money(value: int | float | Decimal, currency: str) -> str:
    symbol, unit = _CURRENCIES[currency]
    amount = Decimal(str(value))  # str() first: the float's shortest repr, not its binary expansion
    amount = amount.quantize(unit, rounding=ROUND_HALF_UP)
    sign = "-" if amount < 0 else ""
    return f"{sign}{symbol}{abs(amount):,f}"


def _render_line(file: TemplateFile, context: Mapping[str, Any], max_chars: int | None = None) -> str:
    """Subjects and titles are one line: a newline inside is a template bug or a header injection."""
    text = file.render(context).strip()
    if len(text.splitlines()) > 1:
        raise TemplateRenderError(file.path, f"must render to one line, got {text[:80]!r}")
    return _checked(file, " ".join(text.split()), max_chars)


def _render_body(file: TemplateFile, context: Mapping[str, Any], max_chars: int | None = None) -> str:
    return _checked(file, file.render(context).strip(), max_chars)


def _checked(file: TemplateFile, text: str, max_chars: int | None) -> str:
    if not text:
        raise TemplateRenderError(file.path, "rendered blank")
    if max_chars is not None and len(text) > max_chars:
        raise TemplateRenderError(file.path, f"rendered {len(text)} characters, more than {max_chars}")
    return text


def _template_line(tb: TracebackType | None, filename: str | None) -> int | None:
    """The template line an error came from: Jinja rewrites tracebacks so template frames carry it."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
