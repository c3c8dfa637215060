"""Why a webhook delivery is refused, as one small tree the HTTP edge maps to status codes once.

    FeedbackRefused            nothing of the request was stored
    ├── SignatureRejected      403: unsigned, wrongly signed, or outside the freshness window
    └── MalformedBatch         400: signed, but not a JSON array of SendGrid event objects

Signature problems are checked first: an unauthenticated caller learns nothing about what we would parse.
"""


class FeedbackRefused(Exception):
    """A webhook request was refused as a whole; nothing of it was stored."""


class SignatureRejected(FeedbackRefused):
    """The request is not provably from SendGrid, or is a stale or future-dated replay."""


class MalformedBatch(FeedbackRefused):
    """The request is authentic but its body is not a batch of events we can read."""
