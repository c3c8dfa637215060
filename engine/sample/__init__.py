"""Sample snapshots that follow the input contract: a seeded synthetic app and a real grocer's history.

`generate` writes a synthetic app population of any size; `convert_completejourney` turns 84.51°'s Complete
Journey into the same layout. Both are run from the command line with `python -m engine.sample`.
"""

from engine.sample.completejourney import ConvertReport, convert_completejourney
from engine.sample.generate import GenerateReport, generate

__all__ = ["ConvertReport", "GenerateReport", "convert_completejourney", "generate"]
