"""End to end: every optimizer of issue 4 trains the quickstart model (LeNet-5) on digits.

A short run (the quickstart config cut to 3 epochs at batch 64 = 68 steps, 4 simulated devices)
through ``train.train_and_evaluate``, the launcher's code path; each must clear a test-accuracy
floor far above chance (0.1). Floors sit ~0.1 below the accuracy measured (noted below), so the
test catches a broken optimizer, not a 1% regression.
"""

import json
import os

import pytest

from configs import quickstart
from configs import sweeps
from lbjax import train
from lbjax.optim import registry
from tests import xla
from tests.test_main import launch

# name -> floor, for the hyperparameters of `configs/quickstart.py:<name>`. Test accuracy
# measured with them on 2 CPU cores, 4 simulated devices: sgd 0.936, nag 0.903 (η = 0.5
# since issue 26; 0.944 at η = 1.0, which fails seed 1 of the full run), adam 0.953,
# adamw 0.950, radam 0.947, adabelief 0.958, lars 0.900, hybrid 0.961 (hybrid + WD-off + noise +
# SmoothOut: 0.956), kfac 0.964, lamb 0.958. `quickstart.py:kfac` leaves `fisher` an unset
# placeholder, so the kfac run also checks that None means the default Fisher (it was refused
# before).
FLOORS = {"sgd": 0.85, "nag": 0.85, "adam": 0.85, "adamw": 0.85, "radam": 0.85,
          "adabelief": 0.85, "lars": 0.80, "hybrid": 0.85, "kfac": 0.85, "lamb": 0.85}


def short_config(name, **extra):
  c = quickstart.get_config(name)
  c.batch_size = 64
  c.num_epochs = 3.0
  c.eval_every_epochs = 3.0
  c.checkpoint_every_steps = 1000
  c.progress_bar = False
  return sweeps.apply_overrides(c, extra, where="test")


def test_quickstart_has_settings_for_every_registered_optimizer():
  assert set(quickstart.OPTIMIZERS) == set(registry.OPTIMIZERS) == set(FLOORS)
  for name in registry.OPTIMIZERS:
    c = quickstart.get_config(name)
    assert c.optimizer.name == name
    registry.validate(c.optimizer)


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_trains_quickstart_model_on_digits(name, tmp_path):
  summary = train.train_and_evaluate(short_config(name), str(tmp_path))
  assert summary["status"] == "completed"
  assert summary["test_accuracy"] >= FLOORS[name], summary


def test_hybrid_with_seed_003_regularisers_and_seed_001_noise(tmp_path):
  """Hybrid + weight decay off at 75% + annealed update noise + SmoothOut, all at once."""
  c = short_config("hybrid", **{"schedule.name": "cosine",
                                "schedule.weight_decay_off_fraction": 0.75,
                                "noise.scale": 1e-4, "noise.annealing": "cosine",
                                "smoothout.scale": 1e-3, "smoothout.adaptive": True})
  summary = train.train_and_evaluate(c, str(tmp_path))
  assert summary["status"] == "completed"
  assert summary["test_accuracy"] >= FLOORS["hybrid"], summary


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quickstart_nag_reaches_090_on_every_seed(seed, tmp_path):
  """Issue 26 item 2: ``configs/quickstart.py:nag`` as a user runs it (the launcher, the whole
  15 epochs, one device) reaches the quickstart's 0.90 with seeds 0, 1 and 2. With η = 1.0 (twice
  the sgd entry's step) the loss climbed back around steps 20–50 and seed 1 ended at 0.103.
  ``experiments/results/quickstart_seeds.md`` has every optimizer on these seeds."""
  workdir = str(tmp_path / "nag")
  run = launch("--config=configs/quickstart.py:nag", f"--workdir={workdir}",
               f"--config.seed={seed}", "--config.progress_bar=False", devices=1,
               env_extra=xla.OPTIMIZED)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(os.path.join(workdir, "status.json")) as f:
    status = json.load(f)
  assert status["status"] == "completed"
  assert status["result_test_accuracy"] >= 0.90, run.stdout[-2000:]
