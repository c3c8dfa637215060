"""What each SendGrid event type means to us: an engagement fact, a behavioural event, a suppression.

One table, so that the fact kinds segments count, the event names analytics see and the reasons the planner
skips an address cannot drift apart. Event types not listed (processed, deferred, group_resubscribe, ...) are
stored and mean nothing more: a deferral is SendGrid still trying, not a verdict on the address.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Meaning:
    """What one event type implies; None where it implies nothing of that sort."""

    fact: str | None
    behaviour_event: str | None
    suppression: str | None


MEANINGS: dict[str, Meaning] = {
    "delivered": Meaning("received", "email_delivered", None),
    "open": Meaning("opened", "email_open", None),
    "click": Meaning("clicked", "email_click", None),
    "bounce": Meaning("bounced", "email_bounce", "bounce"),
    "dropped": Meaning(None, None, "dropped"),
    "unsubscribe": Meaning("unsubscribed", "email_unsubscribe", "unsubscribe"),
    "group_unsubscribe": Meaning("unsubscribed", "email_unsubscribe", "group_unsubscribe"),
    "spamreport": Meaning("spam_reported", "email_spamreport", "spamreport"),
}
_NOTHING = Meaning(None, None, None)


def meaning_of(event: str) -> Meaning:
    """The meaning of an event type; unknown and informational types mean nothing beyond being stored."""
    return MEANINGS.get(event, _NOTHING)
