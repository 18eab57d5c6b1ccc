"""End to end: every optimizer of issue 4 trains the quickstart model (LeNet-5) on digits.

A short run (the quickstart config cut to 3 epochs at batch 64 = 68 steps, 4 simulated devices)
through ``train.train_and_evaluate``, the launcher's code path; each must clear a test-accuracy
floor far above chance (0.1). Floors sit ~0.1 below the accuracy measured (noted below), so the
test catches a broken optimizer, not a 1% regression.
"""

import pytest

from configs import quickstart
from lbjax import train
from lbjax.optim import registry

# name -> (hyperparameters, floor). Test accuracy measured with these settings on 2 CPU cores,
# 4 simulated devices: sgd 0.936, nag 0.944, adam 0.953, adamw 0.950, radam 0.947,
# adabelief 0.958, lars 0.900, hybrid 0.961 (hybrid + WD-off + noise + SmoothOut: 0.956).
OPTIMIZERS = {
    "sgd": (dict(learning_rate=0.05, momentum=0.9, weight_decay=5e-4), 0.85),
    # NAG's (1 − μ) dampening: η = 1.0 takes the steps of undampened momentum SGD at 0.1.
    "nag": (dict(learning_rate=1.0, momentum=0.9, weight_decay=5e-4), 0.85),
    "adam": (dict(learning_rate=3e-3, weight_decay=0.0), 0.85),
    "adamw": (dict(learning_rate=3e-3, weight_decay=0.01), 0.85),
    # β₂ = 0.99: with 0.999 the rectifier γ_t stays < 0.2 for the whole of this 68-step run.
    "radam": (dict(learning_rate=1e-2, b2=0.99, weight_decay=0.01), 0.85),
    "adabelief": (dict(learning_rate=3e-3, weight_decay=0.01), 0.85),
    # Trust coefficient 0.1: each kernel moves ~1% of its norm per step (×10 with momentum).
    "lars": (dict(learning_rate=0.1, momentum=0.9, weight_decay=5e-4, trust_coefficient=0.1),
             0.80),
    "hybrid": (dict(learning_rate=1e-2, b2=0.99, weight_decay=0.01), 0.85),
}


def short_config(name, **extra):
  c = quickstart.get_config()
  c.batch_size = 64
  c.num_epochs = 3.0
  c.eval_every_epochs = 3.0
  c.checkpoint_every_steps = 1000
  c.progress_bar = False
  hyper, _ = OPTIMIZERS[name]
  c.optimizer = registry.config_block(name, **hyper)
  for key, value in extra.items():
    target = c
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return c


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_trains_quickstart_model_on_digits(name, tmp_path):
  summary = train.train_and_evaluate(short_config(name), str(tmp_path))
  assert summary["status"] == "completed"
  assert summary["test_accuracy"] >= OPTIMIZERS[name][1], summary


def test_hybrid_with_seed_003_regularisers_and_seed_001_noise(tmp_path):
  """Hybrid + weight decay off at 75% + annealed update noise + SmoothOut, all at once."""
  c = short_config("hybrid", **{"schedule.name": "cosine",
                                "schedule.weight_decay_off_fraction": 0.75,
                                "noise.scale": 1e-4, "noise.annealing": "cosine",
                                "smoothout.scale": 1e-3, "smoothout.adaptive": True})
  summary = train.train_and_evaluate(c, str(tmp_path))
  assert summary["status"] == "completed"
  assert summary["test_accuracy"] >= OPTIMIZERS["hybrid"][1], summary
