"""Learning-rate, weight-decay and noise schedules against their closed forms."""

import ml_collections
import numpy as np
import pytest

from configs import sweeps
from configs import default
from lbjax import schedules
from lbjax.errors import ConfigError


def config(**overrides):
  c = default.get_config()
  return sweeps.apply_overrides(c, overrides, where="test")


def values(schedule, steps):
  return np.array([float(schedule(t)) for t in range(steps)])


def test_linear_scaling_rule():
  # Seed 000: LARS lr 3.2 at batch 4096, scaled linearly with the batch.
  assert schedules.scaled_learning_rate(3.2, 8192, 4096) == pytest.approx(6.4)
  assert schedules.scaled_learning_rate(3.2, 16384, 4096) == pytest.approx(12.8)
  assert schedules.scaled_learning_rate(0.1, 1024, None) == 0.1
  c = config(**{"optimizer.learning_rate": 3.2, "batch_size": 8192,
                "schedule.base_batch_size": 4096})
  np.testing.assert_allclose(values(schedules.build_learning_rate(c, 10.0, 100), 3), 6.4)


def test_warmup_then_cosine_is_seed_003_eq_17():
  spe, total, warm = 10.0, 300, 50  # 5 warmup epochs (seed 000)
  c = config(**{"optimizer.learning_rate": 0.4, "schedule.name": "cosine",
                "schedule.warmup_epochs": 5.0})
  got = values(schedules.build_learning_rate(c, spe, total), total)
  t = np.arange(total)
  T = total - warm
  expected = np.where(t < warm, 0.4 * t / warm,
                      0.5 * (1 + np.cos(np.pi * (t - warm) / T)) * 0.4)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_step_decay_every_lr_decay_epoch():
  spe = 12.5  # a fractional number of steps per epoch
  c = config(**{"optimizer.learning_rate": 0.1, "schedule.name": "step",
                "schedule.lr_decay": 0.5, "schedule.lr_decay_epoch": 2.0})
  got = values(schedules.build_learning_rate(c, spe, 200), 200)
  t = np.arange(200)
  np.testing.assert_allclose(got, 0.1 * 0.5 ** np.floor(t / (2.0 * spe)), rtol=1e-6)


def test_multistep_seed_003_baseline():
  # Seed 003 §4: 300 epochs, lr × 0.1 at epochs 150 and 225.
  spe = 2.0
  c = config(**{"optimizer.learning_rate": 0.1, "schedule.name": "multistep",
                "schedule.lr_decay": 0.1, "schedule.milestones": (150, 225)})
  got = values(schedules.build_learning_rate(c, spe, 600), 600)
  t = np.arange(600)
  expected = 0.1 * np.where(t < 300, 1.0, np.where(t < 450, 0.1, 0.01))
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_weight_decay_switched_off_at_75_percent():
  c = config(**{"schedule.weight_decay_off_fraction": 0.75})
  wd = schedules.build_weight_decay(c, 400, 5e-4)
  got = values(wd, 400)
  np.testing.assert_allclose(got[:300], 5e-4, rtol=1e-6)
  np.testing.assert_array_equal(got[300:], 0.0)
  assert schedules.build_weight_decay(config(), 400, 5e-4) is None


@pytest.mark.parametrize("annealing,ratio,formula", [
    ("none", 0.0, lambda s, r, x: s + 0 * x),
    ("exponential", 0.01, lambda s, r, x: s * r ** x),
    ("linear", 0.0, lambda s, r, x: s * (1 - x)),
    ("linear", 0.2, lambda s, r, x: s * (1 - (1 - r) * x)),
    ("cosine", 0.0, lambda s, r, x: s * 0.5 * (1 + np.cos(np.pi * x))),
    ("cosine", 0.1, lambda s, r, x: s * (r + (1 - r) * 0.5 * (1 + np.cos(np.pi * x)))),
])
def test_annealing_closed_forms(annealing, ratio, formula):
  block = ml_collections.ConfigDict(dict(scale=1e-2, annealing=annealing, final_ratio=ratio))
  schedules.validate_annealed(block, "config.noise")
  got = values(schedules.build_annealed(block, 100), 101)
  np.testing.assert_allclose(got, formula(1e-2, ratio, np.arange(101) / 100), rtol=1e-5,
                             atol=1e-8)


@pytest.mark.parametrize("block,key", [
    (dict(scale=-1.0, annealing="none", final_ratio=0.0), "config.noise.scale"),
    (dict(scale=1.0, annealing="quadratic", final_ratio=0.0), "config.noise.annealing"),
    (dict(scale=1.0, annealing="linear", final_ratio=2.0), "config.noise.final_ratio"),
    (dict(scale=1.0, annealing="exponential", final_ratio=0.0), "config.noise.final_ratio"),
])
def test_bad_annealing_names_the_key(block, key):
  with pytest.raises(ConfigError) as e:
    schedules.validate_annealed(ml_collections.ConfigDict(block), "config.noise")
  assert e.value.key == key
