"""``config.log_trust_ratios``: validation, the per-layer metrics of a LARS run in metrics.jsonl
and TensorBoard (the factors themselves are checked against NumPy transcriptions of seed 000
Alg. 1 and LAMB Alg. 2 in test_optim_lars.py and test_lamb.py), and SWAP's phases."""

import os

import jax
import pytest

from configs import quickstart
from configs import sweeps
from lbjax import checkpoint as checkpoint_lib
from lbjax import config_lib
from lbjax import metrics as metrics_lib
from lbjax import optim
from lbjax import step as step_lib
from lbjax import swap
from lbjax import train
from lbjax.errors import ConfigError


def _config(optimizer="lars", **overrides):
  c = quickstart.get_config(optimizer)
  c.image_size, c.batch_size, c.num_epochs = 8, 64, 0.2  # ceil(0.2 · 1437 / 64) = 5 steps
  c.schedule.warmup_epochs = 0.0
  c.log_every_steps, c.checkpoint_every_steps, c.progress_bar = 1, 100, False
  c.log_trust_ratios = True
  return sweeps.apply_overrides(c, overrides, where="test")


def test_validation_names_the_key():
  config_lib.validate(_config("lars"), device_count=4)
  config_lib.validate(_config("lamb"), device_count=4)
  with pytest.raises(ConfigError, match="config.log_trust_ratios.*'sgd' applies no layer-wise"):
    config_lib.validate(_config("sgd"), device_count=4)
  typeless = _config("lars")  # a config not typed by default.py (e.g. read from JSON)
  del typeless["log_trust_ratios"]
  typeless.log_trust_ratios = "yes"
  with pytest.raises(ConfigError, match="config.log_trust_ratios: must be True or False"):
    config_lib.validate(typeless, device_count=4)
  assert not config_lib.logs_trust_ratios(_config("lars", log_trust_ratios=False))
  # Seed 000's SWAP: LARS in phase 1 logs them, SGD in phase 2 has none to log.
  c = _config("lars", **{"swap.enabled": True, "swap.num_replicas": 2, "swap.batch_size": 32,
                         "swap.num_epochs": 0.1})
  swap.validate(c, device_count=4)
  assert config_lib.logs_trust_ratios(swap.phase1_config(c))
  assert not config_lib.logs_trust_ratios(swap.phase2_config(c))


def test_lars_run_writes_each_layers_trust_ratio(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  config = _config("lars")
  summary = train.train_and_evaluate(config, workdir)
  assert summary["status"] == "completed" and summary["step"] == 5
  records = [r for r in metrics_lib.read_metrics(workdir) if "train_loss" in r]
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
  exp = step_lib.build(config)
  paths = ["/".join(k.key for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(exp.init_state().params)[0]]
  assert "conv1/kernel" in paths and "conv1/bias" in paths  # LeNet-5's names
  for r in records:
    logged = {k.removeprefix("train_trust_ratio/"): v for k, v in r.items()
              if k.startswith("train_trust_ratio/")}
    assert sorted(logged) == sorted(paths)
    for path, value in logged.items():
      if path.endswith("kernel"):  # LARS's λ = η‖w‖/(‖g‖ + β‖w‖), η = 0.1
        assert value > 0 and abs(value - 1.0) > 1e-3, (r["step"], path)
      else:  # biases: outside the kernels-only mask, no layer-wise factor
        assert value == 1.0, (r["step"], path)
  # The last window is the last step alone: its factors are those kept in the final state.
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  step, state = ckpt.restore_latest(jax.device_get(exp.init_state()))
  ckpt.close()
  assert step == 5
  final = optim.trust_ratio_metrics(state.opt_state)
  for name, value in final.items():
    assert records[-1][f"train_{name}"] == pytest.approx(float(value), rel=1e-6)
  # Rates change from step to step (the gradients do).
  assert records[0]["train_trust_ratio/conv1/kernel"] != records[-1][
      "train_trust_ratio/conv1/kernel"]
  events = b""
  for root, _, files in os.walk(os.path.join(workdir, "tensorboard")):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        events += f.read()
  for path in paths:
    assert f"train_trust_ratio/{path}".encode() in events
  out = capsys.readouterr().out
  assert "train_trust_ratio/*=[" in out and f"({len(paths)})" in out  # stdout: one summary
  assert "train_trust_ratio/conv1/kernel=" not in out


def test_echo_summarises_families_of_series():
  text = metrics_lib.echo_text({"train_loss": 0.5, "train_trust_ratio/a/kernel": 0.25,
                                "train_trust_ratio/b/kernel": 2.0, "train_epoch": 3})
  assert text == "train_loss=0.5, train_epoch=3, train_trust_ratio/*=[0.25, 2] (2)"
