"""The Prefect task of a journey simulation: settings in, a report and its artifact out."""

from datetime import date, time

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from engine.settings import EngineSettings
from engine.simulate import SimulationReport, simulate


@task(cache_policy=NO_CACHE)
def simulate_task(journey: str, start: date, end: date, at: time, settings: EngineSettings) -> SimulationReport:
    return simulate(journey, start, end, settings=settings, at=at)


@task(cache_policy=NO_CACHE)
def publish_simulation_task(report: SimulationReport) -> None:
    """One artifact per journey and range, so a draft's simulations can be compared run after run in the UI."""
    first, last = report.as_ofs[0].date(), report.as_ofs[-1].date()
    create_markdown_artifact(
        key=f"simulation-{report.journey.replace('_', '-')}-{first:%Y-%m-%d}-{last:%Y-%m-%d}",
        markdown=report.markdown(),
        description=f"Simulation of {report.journey} over {first}..{last}",
    )
