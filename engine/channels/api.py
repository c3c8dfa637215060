"""Everything a channel plugin imports, in one place: the extension point's whole surface (see `engine.channels`)."""

from engine.channels.channel import Channel, Claimed, Message, Sender
from engine.channels.planning import address_key, skip_reason
from engine.channels.registry import ChannelPluginError, channel, channels, load_channel_plugins, register_channel
from engine.providers.errors import ConfigurationError, retry_after_seconds
from engine.providers.messages import Outcome
from engine.providers.settings import refuse_placeholder_secret, require_http_url
from engine.render import MessageTemplateError, TemplateRenderError, TemplateStore

__all__ = [
    "Channel",
    "ChannelPluginError",
    "Claimed",
    "ConfigurationError",
    "Message",
    "MessageTemplateError",
    "Outcome",
    "Sender",
    "TemplateRenderError",
    "TemplateStore",
    "address_key",
    "channel",
    "channels",
    "load_channel_plugins",
    "refuse_placeholder_secret",
    "register_channel",
    "require_http_url",
    "retry_after_seconds",
    "skip_reason",
]
