"""Every config in configs/ (and every run of its sweep) loads, validates and builds — no training.

A CIFAR-10 config gets a fake ``data_dir`` and a stand-in dataset of CIFAR-10's shape (50,000
32x32x3 training images, as a zero-stride view): `lbjax.step.build` only needs the shapes. The
model and optimizer state are built with ``jax.eval_shape`` (no parameters computed); a model's
shapes are computed once per model config and image shape.
"""

import glob
import json
import os

import jax
import numpy as np
import pytest

from experiments import run as run_lib
from lbjax import runners
from lbjax import step as step_lib
from lbjax import swap
from lbjax.data import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_DATA_DIR = "/nonexistent/tfds"
# Training-set size and native image shape of each dataset (digits: 1437 after the fixed split).
SHAPES = {"cifar10": (50_000, (32, 32, 3)), "digits": (1437, (8, 8, 1))}


def _config_files() -> list[str]:
  files = []
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    with open(path) as f:
      if "\ndef get_config(" in f.read():
        files.append(os.path.relpath(path, ROOT))
  return files


def _fake_data(config) -> datasets.Dataset:
  num_train, (h, w, c) = SHAPES[config.dataset]
  if config.image_size:
    h = w = config.image_size
  num_validation = round(config.validation_fraction * num_train)

  def split(n):
    return {"image": np.broadcast_to(np.zeros((1, h, w, c), np.uint8), (n, h, w, c)),
            "label": np.broadcast_to(np.zeros((1,), np.int32), (n,))}

  return datasets.Dataset(split(num_train - num_validation), split(10),
                          split(num_validation) if num_validation else None, 10,
                          np.full((c,), 0.5, np.float32), np.full((c,), 0.25, np.float32))


_PARAM_SHAPES: dict[str, object] = {}


def _build(config):
  """The experiment of ``config`` and the shapes of its initial train state."""
  data = _fake_data(config)
  exp = step_lib.build(config, data)
  model_key = json.dumps([config.model.to_dict(), data.train["image"].shape[1:]], sort_keys=True,
                         default=str)
  if model_key not in _PARAM_SHAPES:
    _PARAM_SHAPES[model_key] = jax.eval_shape(
        lambda: exp.model.init(jax.random.PRNGKey(0),
                               np.zeros((1, *data.train["image"].shape[1:]), np.float32),
                               train=False))
  variables = _PARAM_SHAPES[model_key]
  opt_state = jax.eval_shape(exp.tx.init, variables["params"])
  return exp, variables, opt_state


@pytest.mark.parametrize("path", _config_files())
def test_config_and_every_sweep_run_validate_and_build(path, tmp_path):
  runs = run_lib.plan(os.path.join(ROOT, path), str(tmp_path), data_dir=FAKE_DATA_DIR)
  assert runs, path
  for run in runs:
    config = run.config
    runners.validate(config, device_count=1)
    configs = [config]
    if swap.enabled(config):  # phase 1 and the replicas' phase 2 are runs of their own
      configs = [swap.phase1_config(config), swap.phase2_config(config)]
    for c in configs:
      exp, variables, _ = _build(c)
      num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
      assert num_params > 0 and exp.total_steps >= 1
  assert not os.listdir(tmp_path)  # planning writes nothing


def test_the_seed_configs_sweep_the_seeds_settings(tmp_path):
  def plan(spec):
    return [r.config for r in run_lib.plan(os.path.join(ROOT, spec), str(tmp_path),
                                           data_dir=FAKE_DATA_DIR)]

  # Seed 001: VGG9, no preprocessing, BS 128 vs 8192, baseline + 10^-n noise with/without annealing.
  s001 = plan("configs/seed001_noise.py")
  assert {(c.model.name, c.augment, c.dataset) for c in s001} == {("vgg9", "none", "cifar10")}
  cells = {(c.batch_size, c.noise.scale, c.noise.annealing) for c in s001}
  assert len(cells) == len(s001) == 14
  assert {bs for bs, _, _ in cells} == {128, 8192} and (8192, 0.0, "none") in cells
  assert {(s, a) for _, s, a in cells if s} == {(10.0 ** -n, a) for n in (3, 4, 5)
                                                 for a in ("none", "exponential")}
  assert all(c.smoothout.scale == 0 for c in s001)
  smooth = plan("configs/seed001_noise.py:method=smoothout,seeds=2")
  assert len(smooth) == 28 and all(c.noise.scale == 0 for c in smooth)
  assert {c.seed for c in smooth} == {0, 1}

  # Seed 003 Table 1: ResNet-56, NAG 0.1 / 0.9, wd 1e-4, BS 128, 300 epochs; cumulative rows.
  s003 = plan("configs/seed003_ablation.py")
  assert [(c.schedule.name, c.augment, c.schedule.weight_decay_off_fraction) for c in s003] == [
      ("multistep", "standard", None), ("cosine", "standard", None),
      ("cosine", "standard+trivialaugment", None),
      ("cosine", "standard+trivialaugment+cutmix", None),
      ("cosine", "standard+trivialaugment+cutmix", 0.75)]
  for c in s003:
    assert (c.model.name, c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum,
            c.optimizer.weight_decay, c.batch_size, c.num_epochs) == (
                "resnet56", "nag", 0.1, 0.9, 1e-4, 128, 300.0)
  assert tuple(s003[0].schedule.milestones) == (150.0, 225.0) and s003[0].schedule.lr_decay == 0.1

  # Seed 003 Table 2: six optimizers × lr {0.1, 0.01, 0.001}; wd 1e-4 NAG, 0 Adam, else 0.01.
  t2 = plan("configs/seed003_table2.py")
  cells = {(c.optimizer.name, c.optimizer.learning_rate, c.optimizer.weight_decay) for c in t2}
  wd = {"nag": 1e-4, "adam": 0.0, "adamw": 0.01, "radam": 0.01, "adabelief": 0.01, "hybrid": 0.01}
  assert cells == {(n, lr, w) for n, w in wd.items() for lr in (0.1, 0.01, 0.001)}
  assert len(t2) == 18
  assert all(c.augment == "standard+trivialaugment+cutmix" and c.schedule.name == "cosine"
             and c.model.name == "resnet56" for c in t2)

  # Seed 003 Table 3: hybrid, ResNet-34, lr × wd 5 × 5.
  t3 = plan("configs/seed003_table3.py")
  grid = (1e-1, 5e-2, 1e-2, 5e-3, 1e-3)
  assert sorted((c.optimizer.learning_rate, c.optimizer.weight_decay) for c in t3) == sorted(
      (lr, w) for lr in grid for w in (1e-2, 5e-3, 1e-3, 5e-4, 1e-4))
  assert {(c.model.name, c.optimizer.name) for c in t3} == {("resnet34", "hybrid")}
