"""Learning-rate, weight-decay and noise schedules against their closed forms."""

import ml_collections
import numpy as np
import pytest

from configs import default
from configs import sweeps
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


def reference_lr(base, decay, drop_epochs, spe, warmup_epochs, steps):
  """NumPy, float64: lr(t) = min(1, t / W) · base · decay^#{e : t >= e·spe}, W the warmup steps.

  A drop for epoch e lands at the first step t with t >= e·spe (after e epochs of examples),
  counted from the start of the run whatever the warmup.
  """
  t = np.arange(steps, dtype=np.float64)
  drops = sum((t >= e * spe - 1e-9).astype(np.float64) for e in drop_epochs)
  warm = round(warmup_epochs * spe)
  ramp = np.minimum(t / warm, 1.0) if warm > 0 else np.ones_like(t)
  return ramp * base * decay ** drops


@pytest.mark.parametrize("warmup", [0.0, 1.0])
@pytest.mark.parametrize("spe", [10.0, 12.5])  # 12.5: a fractional number of steps per epoch
def test_step_decay_lands_every_lr_decay_epoch_of_the_whole_run(warmup, spe):
  c = config(**{"optimizer.learning_rate": 0.1, "schedule.name": "step",
                "schedule.lr_decay": 0.5, "schedule.lr_decay_epoch": 2.0,
                "schedule.warmup_epochs": warmup})
  steps = int(9 * spe)
  got = values(schedules.build_learning_rate(c, spe, steps), steps)
  expected = reference_lr(0.1, 0.5, [2.0, 4.0, 6.0, 8.0], spe, warmup, steps)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
  first = int(np.ceil(2.0 * spe))  # the step of epoch 2: 20 (spe 10) or 25 (spe 12.5)
  assert got[first - 1] == pytest.approx(0.1) and got[first] == pytest.approx(0.05)


@pytest.mark.parametrize("warmup", [0.0, 1.0])
def test_multistep_drops_at_the_milestone_step_with_and_without_warmup(warmup):
  # Issue 18 item 7: milestones=(2,), warmup 1 epoch used to drop at epoch 3.03, not 2.
  spe = 12.5
  c = config(**{"optimizer.learning_rate": 0.1, "schedule.name": "multistep",
                "schedule.lr_decay": 0.1, "schedule.milestones": (2.0, 3.3),
                "schedule.warmup_epochs": warmup})
  got = values(schedules.build_learning_rate(c, spe, 60), 60)
  np.testing.assert_allclose(got, reference_lr(0.1, 0.1, [2.0, 3.3], spe, warmup, 60),
                             rtol=1e-6, atol=1e-9)
  assert got[24] == pytest.approx(0.1) and got[25] == pytest.approx(0.01)  # epoch 2 = step 25
  assert got[41] == pytest.approx(0.01) and got[42] == pytest.approx(0.001)  # 3.3 · 12.5 = 41.25


def test_milestone_inside_the_warmup_scales_the_ramp():
  c = config(**{"optimizer.learning_rate": 0.1, "schedule.name": "multistep",
                "schedule.lr_decay": 0.5, "schedule.milestones": (1.0,),
                "schedule.warmup_epochs": 2.0})
  got = values(schedules.build_learning_rate(c, 10.0, 40), 40)
  np.testing.assert_allclose(got, reference_lr(0.1, 0.5, [1.0], 10.0, 2.0, 40), rtol=1e-6,
                             atol=1e-9)
  assert got[20] == pytest.approx(0.05)


def test_milestone_step_is_exact_for_whole_steps():
  assert schedules.milestone_step(0.1, 30.0) == 3  # 0.1 · 30 = 3.0000000000000004 in floats
  assert schedules.milestone_step(3.3, 12.5) == 42
  assert schedules.milestone_step(2.0, 12.5) == 25


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
  block = ml_collections.ConfigDict({"scale": 1e-2, "annealing": annealing, "final_ratio": ratio})
  schedules.validate_annealed(block, "config.noise")
  got = values(schedules.build_annealed(block, 100), 101)
  np.testing.assert_allclose(got, formula(1e-2, ratio, np.arange(101) / 100), rtol=1e-5,
                             atol=1e-8)


@pytest.mark.parametrize("block,key", [
    ({"scale": -1.0, "annealing": "none", "final_ratio": 0.0}, "config.noise.scale"),
    ({"scale": 1.0, "annealing": "quadratic", "final_ratio": 0.0}, "config.noise.annealing"),
    ({"scale": 1.0, "annealing": "linear", "final_ratio": 2.0}, "config.noise.final_ratio"),
    ({"scale": 1.0, "annealing": "exponential", "final_ratio": 0.0}, "config.noise.final_ratio"),
])
def test_bad_annealing_names_the_key(block, key):
  with pytest.raises(ConfigError) as e:
    schedules.validate_annealed(ml_collections.ConfigDict(block), "config.noise")
  assert e.value.key == key
