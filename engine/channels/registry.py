"""The channels a run knows: the two built-in ones, then those registered by plugins, in that order.

A plugin is a module that defines `CHANNEL`, a `Channel`; `NUDGE_CHANNEL_PLUGINS=module.path,other.module`
names the plugins to load. Definitions load them first (`engine.definitions.load_definitions`), so that a
journey, rule or delivery policy naming a channel nobody registered is refused like any other definition
error, naming file, line and field; dispatch loads them too, since the dispatch-only flow reads no definitions.
`register_channel` registers one from code.

This module imports no channel at import time: the models validate channel names through it.
"""

import functools
import importlib
import os
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator

if TYPE_CHECKING:
    from engine.channels.channel import Channel

PLUGINS_VARIABLE = "NUDGE_CHANNEL_PLUGINS"

_REGISTERED: dict[str, "Channel"] = {}


class ChannelPluginError(ImportError):
    """A plugin named in NUDGE_CHANNEL_PLUGINS cannot be loaded: the run must not start without its channel."""


@functools.cache
def _built_in() -> tuple["Channel", ...]:
    from engine.channels.email import EMAIL
    from engine.channels.push import PUSH

    return (EMAIL, PUSH)


def channels() -> dict[str, "Channel"]:
    """Every registered channel by name: email, push, then plugins in the order they were registered."""
    return {built_in.name: built_in for built_in in _built_in()} | _REGISTERED


def channel(name: str) -> "Channel":
    """The channel called `name`, or a KeyError listing the registered ones."""
    known = channels()
    if name not in known:
        raise KeyError(f"unknown channel {name!r} (registered: {', '.join(known)}; {PLUGINS_VARIABLE} adds more)")
    return known[name]


def register_channel(new: "Channel") -> "Channel":
    """Register `new`; registering the very same channel again is harmless, another one under its name is not."""
    existing = channels().get(new.name)
    if existing is not None and existing is not new:
        raise ValueError(f"a channel named {new.name!r} is already registered")
    _REGISTERED[new.name] = new
    return new


def load_channel_plugins(modules: str | None = None) -> list[str]:
    """Import every plugin module named in `modules` (default: NUDGE_CHANNEL_PLUGINS) and register its CHANNEL.

    Returns the names of the channels they registered.
    """
    from engine.channels.channel import Channel

    names = []
    listed = os.environ.get(PLUGINS_VARIABLE, "") if modules is None else modules
    for module_name in (part.strip() for part in listed.split(",")):
        if not module_name:
            continue
        where = f"{PLUGINS_VARIABLE} names {module_name!r}, which"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ChannelPluginError(f"{where} cannot be imported: {exc}") from exc
        plugin = getattr(module, "CHANNEL", None)
        if not isinstance(plugin, Channel):
            raise ChannelPluginError(f"{where} defines no CHANNEL = Channel(...)")
        names.append(register_channel(plugin).name)
    return names


def _registered_name(name: str) -> str:
    """Validate a channel name against the registry, for the definition models."""
    known = channels()
    if name not in known:
        raise ValueError(f"unknown channel {name!r}: registered are {', '.join(known)} ({PLUGINS_VARIABLE} adds more)")
    return name


ChannelName = Annotated[str, AfterValidator(_registered_name)]
"""A channel name in a definition: any registered channel, checked when the definition is validated."""
