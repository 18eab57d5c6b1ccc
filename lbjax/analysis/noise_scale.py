"""The gradient noise scale B_simple (McCandlish et al. 2018, App. A.1), for analysis scripts.

The estimator lives in `lbjax.noise_scale`, below the train step and the loop in the import
layers (``pyproject.toml``), because the train step records its two squared norms and the loop
averages them (``config.log_noise_scale``); it is re-exported here unchanged:

* ``simple_noise_scale(sq_small, sq_big, b_small, b_big)`` → ``(g_sq, trace_sigma, b_simple)``;
* ``batch_sizes(global_batch, device_count, micro_batch_size)`` → ``(b_small, b_big, splits)``;
* ``squared_norm(tree)``;
* ``NoiseScaleEMA``: the moving averages across logging windows (``.update``, ``.replay`` of a
  run's ``metrics.jsonl``, ``.b_simple``, ``.values``);
* ``window_b_simple(records, start, end)`` / ``second_half_b_simple(records)``: B_simple over a
  stated stretch of a run's ``metrics.jsonl`` (the windows ending in ``(start, end]``; the second
  half of the logged training).
"""

from lbjax.noise_scale import NoiseScaleEMA
from lbjax.noise_scale import batch_sizes
from lbjax.noise_scale import second_half_b_simple
from lbjax.noise_scale import simple_noise_scale
from lbjax.noise_scale import squared_norm
from lbjax.noise_scale import window_b_simple

__all__ = ["NoiseScaleEMA", "batch_sizes", "second_half_b_simple", "simple_noise_scale",
           "squared_norm", "window_b_simple"]
