"""The one entry point of a run: picks the runner of a config (normal run or SWAP).

`run(config, workdir, callback)` is what the launcher, the sweep runner and HPO trials call; the
summary it returns carries ``result_test_accuracy`` (and ``result_validation_accuracy`` when a
validation split exists): the accuracy of the model the run reports as its result (the trained
weights, the SWA average with ``config.swa.enabled``, the SWAP average with ``config.swap``).
"""

from typing import Any, Callable, Optional

import ml_collections

from lbjax import swap
from lbjax import train


def run(config: ml_collections.ConfigDict, workdir: str,
        callback: Optional[Callable[[int, dict], bool]] = None) -> dict[str, Any]:
  if swap.enabled(config):
    return swap.run(config, workdir)
  return train.train_and_evaluate(config, workdir, callback=callback)
