"""The senders of a run, one per channel, built together and closed together."""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from engine.channels.channel import Sender
from engine.channels.registry import channels


@dataclass(frozen=True)
class Senders:
    """A sender per channel name, in dispatch order; closing closes them all."""

    by_channel: Mapping[str, Sender]

    def __getitem__(self, channel: str) -> Sender:
        return self.by_channel[channel]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_channel)

    def close(self) -> None:
        """Release thread pools, connections and SDK apps."""
        for sender in self.by_channel.values():
            sender.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def build_channel_senders() -> Senders:
    """A sender for every registered channel, from the environment; ConfigurationError names what to set.

    One channel that cannot be built fails them all (after closing those already built): a run that silently
    skipped a channel would leave its messages waiting unnoticed.
    """
    built: dict[str, Sender] = {}
    try:
        for name, spec in channels().items():
            built[name] = spec.build_sender()
    except BaseException:
        Senders(built).close()
        raise
    return Senders(built)
