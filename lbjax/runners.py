"""The one entry point of a run: picks the runner of a config (normal run or SWAP).

`run(config, workdir, callback)` is what the launcher, the sweep runner and HPO trials call; the
summary it returns carries ``status``, ``step``, ``test_accuracy`` and ``result_test_accuracy``
(and ``result_validation_accuracy`` when a validation split exists): the accuracy of the model
the run reports as its result (the trained weights, the SWA average with ``config.swa.enabled``,
the SWAP average with ``config.swap``). ``callback(step, metrics)`` runs at every evaluation of
every runner, with increasing steps, and may stop the run (`lbjax.loop.run`).
"""

from collections.abc import Callable
from typing import Any

import ml_collections

from lbjax import config_lib, swap, train


def validate(config: ml_collections.ConfigDict, *, device_count: int, process_count: int = 1
             ) -> None:
  """Raises ConfigError for a bad config, checked by the runner that will run it."""
  if swap.enabled(config):
    swap.validate(config, device_count=device_count, process_count=process_count)
  else:
    config_lib.validate(config, device_count=device_count, process_count=process_count)


def run(config: ml_collections.ConfigDict, workdir: str,
        callback: Callable[[int, dict], bool] | None = None) -> dict[str, Any]:
  if swap.enabled(config):
    return swap.run(config, workdir, callback=callback)
  return train.train_and_evaluate(config, workdir, callback=callback)
