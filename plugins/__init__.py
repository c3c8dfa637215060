"""Channel plugins: channels added outside the core, each written against `engine.channels.api` alone.

Load one by naming its module in NUDGE_CHANNEL_PLUGINS, e.g. `NUDGE_CHANNEL_PLUGINS=plugins.webhook_channel`.
"""
