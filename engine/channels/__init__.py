"""The channel extension point: what a channel is (`channel.py`), and the registry that makes one known.

A channel (`Channel`) says how to find its recipients among the users at planning, how to check and render its
templates, how to build its sender from the environment, how big a wave it sends and which Prefect rate limit
paces it, and how its addresses compare on the suppression list. Email and push are the two built-in channels
(`engine/channels/email.py`, `push.py`); nothing else in the core names a channel.

A plugin is a module defining `CHANNEL = Channel(...)`, written against `engine.channels.api` alone, and loaded
by naming it in `NUDGE_CHANNEL_PLUGINS` (comma-separated module paths). Journeys, rules and the delivery policy
may then name its channel; its templates live in `templates/<channel>/<template>/` and read the same context
builders (`engine/contexts.py`) as the built-in ones. `plugins/webhook_channel.py` is an example.

This package imports nothing itself: the definition models validate channel names through `registry`, and
must not load the provider SDKs to do so.
"""
