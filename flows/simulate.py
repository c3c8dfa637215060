"""What-if: run a journey, a draft too, over past days without touching live state or sending anything."""

from datetime import date, time

from prefect import flow

from engine.settings import EngineSettings
from engine.simulate import SimulationReport
from tasks.simulate import publish_simulation_task, simulate_task


@flow(name="simulate-journey", log_prints=True)
def simulate_journey(journey: str, start: date, end: date, at: time = time(6)) -> SimulationReport:
    """Simulate one journey over a range of past days and publish what it would have done.

    The journey starts with no one in it on `start`; caps see only its own messages; nothing is written to the
    live database or stores and no provider is called (engine/simulate.py). The artifact lists entries per day,
    where instances were after each run, goal conversions and the messages that would have gone out per channel.

    Args:
        journey: Name of the journey in the definitions folder, whatever its status (draft journeys included).
        start: First day to simulate (UTC date).
        end: Last day to simulate, inclusive (UTC date).
        at: Time of day of each simulated run, UTC; the daily schedule runs at 06:00.
    """
    report = simulate_task(journey, start, end, at, EngineSettings())
    publish_simulation_task(report)
    return report
