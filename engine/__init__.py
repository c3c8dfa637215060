"""Nudge: a batch personalization and journey engine."""
