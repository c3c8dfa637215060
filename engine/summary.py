"""What a run did, in one structure: recorded in the run history, printed by the CLI, shown as artifacts."""

from dataclasses import dataclass
from datetime import datetime

from engine.channels.registry import channels
from engine.dispatch import DispatchCounts
from engine.pipeline import IngestSummary, JourneySummary, SegmentSummary


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    as_of: datetime
    dry_run: bool
    ingest: IngestSummary
    segments: list[SegmentSummary]
    journeys: list[JourneySummary]
    delivery: dict[str, DispatchCounts]
    in_doubt: int
    warnings: list[str]

    def messages(self) -> dict[str, int]:
        """Messages by channel and fate across journeys: planned, sent (accepted), skipped, failed."""
        totals: dict[str, int] = {}
        for journey in self.journeys:
            for key, count in journey.messages.items():
                channel, status, *_ = key.split(":")
                totals[f"{channel}_{status}"] = totals.get(f"{channel}_{status}", 0) + count
        for channel, counts in self.delivery.items():
            for outcome, count in counts.outcomes.items():
                name = "sent" if outcome == "accepted" else outcome
                totals[f"{channel}_{name}"] = totals.get(f"{channel}_{name}", 0) + count
            if counts.possible_duplicates:
                totals[f"{channel}_possible_duplicates"] = counts.possible_duplicates
        return dict(sorted(totals.items()))

    def counts(self) -> dict[str, object]:
        return {
            "ingest": self.ingest,
            "segments": {s.name: {"size": s.size, "entered": s.entered, "exited": s.exited} for s in self.segments},
            "journeys": {j.name: j for j in self.journeys},
            "delivery": {channel: counts.as_dict() for channel, counts in self.delivery.items()},
            "messages": self.messages(),
            "in_doubt": self.in_doubt,
            "warnings": self.warnings,
        }

    def markdown(self) -> str:
        lines = [
            f"# Run for {self.as_of.isoformat()}" + (" (dry run)" if self.dry_run else ""),
            "",
            f"Snapshot `{self.ingest.fingerprint[:16]}`: {self.ingest.rows_loaded:,} new rows loaded, "
            f"{self.ingest.rows_quarantined:,} quarantined, {self.ingest.users:,} users.",
            "",
            "## Segments",
            "",
            "| segment | size | entered | exited |",
            "|---|---:|---:|---:|",
            *(f"| {s.name} | {s.size:,} | {s.entered:,} | {s.exited:,} |" for s in self.segments),
            "",
            "## Journeys",
            "",
            "| journey | entered | steps taken | exits | waiting at |",
            "|---|---:|---:|---|---|",
            *(
                f"| {j.name} | {j.entered:,} | {j.transitions:,} | {_pairs(j.exits)} | {_pairs(j.at_node)} |"
                for j in self.journeys
            ),
            "",
            "## Messages",
            "",
            "Held messages wait for the end of the user's quiet hours; sent counts what went out in this run.",
            "",
            "| channel | planned | held | sent | skipped | failed | retryable |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        messages = self.messages()
        for channel in channels():
            cells = [
                messages.get(f"{channel}_{k}", 0) for k in ("planned", "held", "sent", "skipped", "failed", "retryable")
            ]
            lines.append(f"| {channel} | " + " | ".join(f"{c:,}" for c in cells) + " |")
        lines += self._delivery_notes(messages)
        if self.warnings:
            lines += ["", "## Definition warnings", "", *(f"- {warning}" for warning in self.warnings)]
        return "\n".join(lines) + "\n"

    def _delivery_notes(self, messages: dict[str, int]) -> list[str]:
        """What an operator must know about this run's sends beyond the table: doubts, pauses, alerts."""
        notes = []
        for channel, counts in sorted(self.delivery.items()):
            if counts.configuration_alert:
                notes.append(
                    f"**{channel} stopped by a configuration error**: {counts.configuration_alert}. Its"
                    " unsent messages stay sendable; fix the credentials or project and run again."
                )
            if counts.paused_until:
                notes.append(
                    f"{channel} paused by the provider until {counts.paused_until.isoformat()}: the rest"
                    " goes out in a later run."
                )
        duplicates = sum(messages.get(f"{channel}_possible_duplicates", 0) for channel in channels())
        if duplicates:
            notes.append(
                f"**{duplicates} possible duplicate(s)**: re-sent after a crash or timeout left their"
                " first send's outcome unknown (dispatch policy `resend`)."
            )
        if self.in_doubt:
            notes.append(
                f"**{self.in_doubt} message(s) in doubt**: sent with no recorded outcome. Under `resend` a"
                " later run sends them again once their mark is stale; under `hold` they wait for an operator."
            )
        return [line for note in notes for line in ("", note)]


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{key}: {value:,}" for key, value in sorted(counts.items())) or "-"
