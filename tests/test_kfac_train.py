"""K-FAC in the real train step and the launcher: 1 vs 4 devices, LeNet5 and a ResNet on digits."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import seed002_kfac
from configs import seed002_sgd
from configs import sweeps
from lbjax import mesh as mesh_lib
from lbjax import step as step_lib
from lbjax import train
from tests import xla
from tests.hang import HANG_SECONDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def on_digits(config, **overrides):
  """A seed 002 config moved to the embedded digits (8x8 images upsampled to 32x32)."""
  config.dataset = "digits"
  config.data_dir = None
  config.image_size = 32
  config.augment = "crop+normalize"  # digits are not mirror-symmetric
  config.progress_bar = False
  config.log_every_steps = 10
  config.eval_every_epochs = 1.0
  config.checkpoint_every_steps = 1000
  return sweeps.apply_overrides(config, overrides, where="test")


def run_steps(config, num_devices, steps):
  exp = step_lib.build(config)
  mesh = mesh_lib.data_mesh(jax.devices()[:num_devices])
  program = exp.train_program(mesh)
  state = mesh_lib.put_replicated(exp.init_state(), mesh)
  for step in range(steps):
    state, metrics = program(state, exp.put_train_batch(step, mesh))
  assert np.all(np.isfinite(mesh_lib.to_host(metrics["loss"])))
  return mesh_lib.to_host(state)


@pytest.mark.parametrize("model,fisher", [("lenet5", "empirical"), ("resnet_tiny", "sampled")])
def test_one_and_four_devices_give_the_same_result(model, fisher):
  assert jax.device_count() >= 4, "tests/conftest.py must simulate 4 CPU devices"
  config = on_digits(seed002_kfac.get_config("bs=128"), **{
      "model.name": model, "image_size": 16, "batch_size": 32, "optimizer.fisher": fisher,
      "optimizer.factor_update_period": 1, "optimizer.inverse_update_period": 2,
      "optimizer.learning_rate": 0.01,
      "optimizer.damping": 0.01})
  one, four = run_steps(config, 1, 3), run_steps(config, 4, 3)
  kfac_one, kfac_four = one.opt_state[0], four.opt_state[0]
  assert int(kfac_one.count) == int(kfac_four.count) == 3
  for a, b in zip(jax.tree.leaves((one.params, one.batch_stats, kfac_one)),
                  jax.tree.leaves((four.params, four.batch_stats, kfac_four))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # The factors hold real statistics and the inverses are not the initial identity.
  inverse = np.asarray(kfac_one.inverses["logits"]["a"])
  assert np.abs(inverse - np.eye(len(inverse))).max() > 1e-2


def launch(*args, devices):
  env = xla.process_env(devices)
  run = subprocess.run([sys.executable, "-m", "lbjax.main", *args, "--config.progress_bar=False"],
                       check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_SECONDS)
  assert run.returncode == 0, run.stderr[-3000:]
  last = run.stdout.strip().splitlines()[-1]
  assert last.startswith("final test accuracy: "), run.stdout[-2000:]
  return float(last.split(": ")[1].split()[0])


DIGITS_FLAGS = ["--config.dataset=digits", "--config.image_size=32",
                "--config.augment=crop+normalize", "--config.checkpoint_every_steps=1000",
                "--config.eval_every_epochs=10"]


def test_lenet5_kfac_reaches_sgd_accuracy_on_digits(tmp_path):
  """Seed 002's batch-128 rows, 3 epochs (34 steps) on digits: K-FAC >= momentum SGD."""
  epochs = 3.0
  kfac = launch("--config=configs/seed002_kfac.py:bs=128", f"--workdir={tmp_path / 'kfac'}",
                f"--config.num_epochs={epochs}", *DIGITS_FLAGS, devices=1)
  sgd = train.train_and_evaluate(
      on_digits(seed002_sgd.get_config("bs=128"), num_epochs=epochs, eval_every_epochs=10.0),
      str(tmp_path / "sgd"))["test_accuracy"]
  print(f"after {epochs} epochs: K-FAC test accuracy {kfac:.4f}, momentum SGD {sgd:.4f}")
  assert kfac >= sgd
  assert kfac >= 0.8


def test_resnet_kfac_trains_through_the_launcher_on_four_devices(tmp_path):
  """ResNet (BatchNorm: momentum SGD for its scale/bias) with the sampled Fisher, 2 epochs."""
  accuracy = launch("--config=configs/seed002_kfac.py:bs=128", f"--workdir={tmp_path / 'resnet'}",
                    "--config.model.name=resnet_tiny", "--config.image_size=16",
                    "--config.batch_size=64", "--config.num_epochs=2",
                    "--config.optimizer.learning_rate=0.01", "--config.optimizer.damping=0.01",
                    "--config.optimizer.fisher=sampled", *DIGITS_FLAGS[:1], *DIGITS_FLAGS[2:],
                    devices=4)
  print(f"resnet_tiny, K-FAC, 2 epochs on 4 devices: test accuracy {accuracy:.4f}")
  assert accuracy > 0.5  # 10 classes: chance is 0.1

