"""SWAP: vmapped replicas vs separate runs, device-count invariance, averaging, resume."""

import os
import shutil

import flax
import jax
import numpy as np
import pytest

from configs import swap_digits
from lbjax import checkpoint as checkpoint_lib
from lbjax import config_lib
from lbjax import metrics as metrics_lib
from lbjax import swap
from lbjax import train
from lbjax.errors import ConfigError


def tiny_config(**overrides):
  """swap_digits at test size: 8x8 images, a one-block ResNet, a few steps per phase."""
  c = swap_digits.get_config()
  with c.unlocked():  # one stage of one 4-channel block: BatchNorm, residual, fast to compile
    c.model.stage_sizes, c.model.widths = (1,), (4,)
  values = {"image_size": 8, "batch_size": 256, "num_epochs": 1.0,
            "schedule.warmup_epochs": 0.0, "swap.num_replicas": 4, "swap.batch_size": 16,
            "swap.num_epochs": 0.05, "log_every_steps": 2, "eval_every_epochs": 1.0,
            "checkpoint_every_steps": 2, "eval_batch_size": 360, "progress_bar": False,
            **overrides}
  for key, value in values.items():
    target = c
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return c


def _close(a, b, tol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


def _start(config):
  """The phase-2 experiment and K replicas of a (briefly trained) phase-1 state."""
  exp = train.build(swap.phase2_config(config))
  state = exp.init_state()
  return exp, swap.init_replicas(exp, state, config.swap.num_replicas)


def _train(exp, replicas, seeds, steps, devices):
  for _, states, _ in swap.train_replicas(exp, replicas, seeds, stop=steps, devices=devices):
    pass
  return swap.replicas_from_devices(states)


def test_vmapped_replicas_equal_separate_single_replica_runs_on_1_and_2_devices():
  """Phase 2 as one vmap (on 1 device, and split over 2) == each replica's own one-device run."""
  config = tiny_config(**{"swap.num_replicas": 2, "swa.enabled": True, "swa.period": 2})
  exp, replicas = _start(config)
  seeds = [swap.replica_seed(config, k) for k in range(2)]
  runs = {n: _train(exp, replicas, seeds, 3, jax.devices()[:n]) for n in (1, 2)}
  assert runs[1].step.tolist() == [3, 3]
  for k in range(2):
    # Reference: replica k as a normal one-device run of its own config (its seed).
    exp_k = train.build(swap.phase2_config(config, k), exp.data)
    p_step = jax.pmap(exp_k.train_step, axis_name=train.AXIS, devices=jax.devices()[:1])
    state = flax.jax_utils.replicate(jax.tree.map(lambda x: x[k], replicas), jax.devices()[:1])
    for step in range(3):
      state, _ = p_step(state, exp_k.train_batch(step, local_device_count=1))
    single = jax.device_get(jax.tree.map(lambda x: x[0], state))
    for vmapped in runs.values():
      _close(jax.tree.map(lambda x, k=k: x[k], vmapped), single)
  _close(runs[1], runs[2])
  # The replicas differ (own data order and augmentation); each keeps its own SWA average.
  assert max(np.abs(a[0] - a[1]).max() for a in jax.tree.leaves(runs[1].params)) > 1e-4
  assert runs[1].opt_state.count.tolist() == [2, 2]  # the weights after steps 1 and 3


def test_average_is_the_arithmetic_mean():
  rng = np.random.default_rng(0)
  tree = {"a": rng.normal(size=(4, 3, 2)).astype(np.float32),
          "b": {"c": rng.normal(size=(4, 5)).astype(np.float32)}}
  mean = swap.average_replicas(tree)
  np.testing.assert_allclose(mean["a"], (tree["a"][0] + tree["a"][1] + tree["a"][2]
                                         + tree["a"][3]) / 4, rtol=1e-6)
  np.testing.assert_allclose(mean["b"]["c"], sum(tree["b"]["c"]) / 4, rtol=1e-6)
  assert mean["a"].dtype == np.float32 and mean["a"].shape == (3, 2)


def test_bad_swap_config_names_the_key():
  cases = [({"swap.num_replicas": 6}, "config.swap.num_replicas"),
           ({"swap.batch_size": 0}, "config.swap.batch_size"),
           ({"swap.optimizer.name": "sgdd"}, "config.swap.optimizer.name"),
           ({"swap.schedule.warmup_epochs": 1.0}, "config.swap.schedule.warmup_epochs"),
           ({"swap.phase1_stop_accuracy": 1.5}, "config.swap.phase1_stop_accuracy")]
  for overrides, key in cases:
    with pytest.raises(ConfigError) as e:
      config_lib.validate(tiny_config(**overrides), device_count=4)
    assert e.value.key == key, (overrides, e.value)
  exp, replicas = _start(tiny_config())
  with pytest.raises(ConfigError, match="config.swap.num_replicas"):
    next(swap.train_replicas(exp, replicas, [1, 2, 3, 4], stop=1, devices=jax.devices()[:3]))


def _replicas(workdir, config):
  exp, template = _start(config)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "phase2", "checkpoints"))
  step, tree = ckpt.restore_latest(template)
  ckpt.close()
  return step, tree


def test_all_phases_run_and_an_interrupted_phase2_resumes(tmp_path, capsys):
  workdir = str(tmp_path / "swap")
  config = tiny_config()
  summary = train.train_and_evaluate(config, workdir)  # the launcher's call: dispatches to SWAP
  assert summary["status"] == "completed" and summary["phase"] == 3
  lines = capsys.readouterr().out.strip().splitlines()
  for k in range(4):
    assert any(line.startswith(f"replica {k} test accuracy: ") for line in lines)
  assert any(line.startswith("replicas' mean test accuracy: ") for line in lines)
  assert any(line.startswith("averaged model test accuracy: ") for line in lines)
  assert lines[-1].startswith("final test accuracy: ")
  status = metrics_lib.read_status(workdir)
  assert status["status"] == "completed" and status["phase"] == 3
  each = status["replica_test_accuracy"]
  assert len(each) == 4 and status["replica_mean_test_accuracy"] == pytest.approx(np.mean(each))
  assert float(lines[-1].split(": ")[1]) == pytest.approx(status["test_accuracy"], abs=1e-4)
  assert metrics_lib.read_status(os.path.join(workdir, "phase1"))["step"] == \
      status["phase1_step"] == 6  # ceil(1437 / 256)
  final_step, final = _replicas(workdir, config)
  assert final_step == status["step"] == 5  # ceil(0.05 * 1437 / 16)
  # Phase 3's model is the mean of the replicas, with statistics recomputed (not copied).
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "phase3", "checkpoints"))
  model = ckpt.restore(0, jax.tree.map(lambda x: x[0], {"params": final.params,
                                                        "batch_stats": final.batch_stats}))
  ckpt.close()
  _close(model["params"], swap.average_replicas(final.params), 1e-6)
  assert max(np.abs(a - b).max() for a, b in zip(
      jax.tree.leaves(model["batch_stats"]), jax.tree.leaves(final.batch_stats))) > 1e-3

  # Interrupt phase 2 after its step-2 checkpoint: drop later checkpoints and phase 3.
  ckpt_dir = os.path.join(workdir, "phase2", "checkpoints")
  for s in sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()):
    if s > 2:
      shutil.rmtree(os.path.join(ckpt_dir, str(s)))
  shutil.rmtree(os.path.join(workdir, "phase3"))
  phase1_before = metrics_lib.read_metrics(os.path.join(workdir, "phase1"))
  resumed = swap.run(config, workdir)
  assert resumed["status"] == "completed"
  assert metrics_lib.read_metrics(os.path.join(workdir, "phase1")) == phase1_before  # not rerun
  step, again = _replicas(workdir, config)
  assert step == final_step
  jax.tree.map(np.testing.assert_array_equal, again, final)
  for key in ("test_accuracy", "test_loss", "replica_test_accuracy"):
    assert resumed[key] == pytest.approx(status[key], abs=1e-6), key
