"""SWAP: each replica is the normal run of its phase-2 config, on any layout; averaging; resume;
the callback through every phase."""

import errno
import os
import shutil

import jax
import ml_collections
import numpy as np
import optuna
import pytest

from configs import swap_digits
from configs import sweeps
from lbjax import checkpoint as checkpoint_lib
from lbjax import mesh as mesh_lib
from lbjax import metrics as metrics_lib
from lbjax import runners
from lbjax import step as step_lib
from lbjax import swap
from lbjax import workdir as workdir_lib
from lbjax.errors import ConfigError
from lbjax.hpo import worker
from lbjax.optim import registry


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
  return sweeps.apply_overrides(c, values, where="test")


def _close(a, b, tol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


def _same_replica(got, ref, tol=1e-6):
  """Weights, BatchNorm statistics, step and seed within 1e-6; the optimizer state within 1e-6
  of each leaf's scale, except K-FAC's curvature factors (and their inverses): sums over ~10^3
  patch products, whose
  float32 rounding differs between a vmapped (grouped) convolution and a plain one by up to
  ~1e-5 of their scale (measured: 9.3e-6 on factors of magnitude 9.5)."""
  _close({"params": got.params, "batch_stats": got.batch_stats, "step": got.step,
          "seed": got.seed},
         {"params": ref.params, "batch_stats": ref.batch_stats, "step": ref.step,
          "seed": ref.seed}, tol)
  # The same optimizer (a phase 2 that kept phase 1's optimizer has another state tree).
  assert jax.tree.structure(got.opt_state) == jax.tree.structure(ref.opt_state)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(got.opt_state),
                          jax.tree.leaves(ref.opt_state)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    factor = any(name in jax.tree_util.keystr(path) for name in ("factors", "inverses"))
    scale = max(1.0, float(np.abs(y).max(initial=0.0)))
    tol_leaf = (2e-5 if factor else tol) * scale
    assert np.abs(x - y).max(initial=0.0) <= tol_leaf, (jax.tree_util.keystr(path),
                                                        np.abs(x - y).max(), tol_leaf)


def _take(tree, k):
  return jax.tree.map(lambda x: np.asarray(x)[k], tree)


def _phase1_state(config, data):
  """Phase-1 weights: the initial state of phase 1's model (any weights serve the comparison)."""
  return jax.device_get(step_lib.build(swap.phase1_config(config), data).init_state())


def _normal_run(config, data, state1, steps, devices):
  """A normal run of ``config`` on a mesh of ``devices`` from phase-1 weights ``state1``, by the
  launcher's own pieces: its Experiment and train program, a fresh optimizer state, its own
  data stream."""
  exp = step_lib.build(config, data)
  state = exp.init_state().replace(params=state1.params, batch_stats=state1.batch_stats,
                                   opt_state=exp.tx.init(state1.params))
  mesh = mesh_lib.data_mesh(devices)
  program = exp.train_program(mesh)
  state = mesh_lib.put_replicated(state, mesh)
  for s in range(steps):
    state, _ = program(state, exp.put_train_batch(s, mesh))
  return mesh_lib.to_host(state)


def _swap_replicas(config, data, state1, steps, execution, devices):
  exp = step_lib.build(swap.phase2_config(config), data)
  replicas = swap.Replicas(exp, swap.init_replicas(config, data, state1), execution, devices)
  for s in range(steps):
    replicas.step(s)
  return replicas.host_states()


_LR = {"sgd": 0.05, "nag": 0.05, "lars": 0.5, "kfac": 0.02}
CASES = {name: {"swap.optimizer": registry.config_block(name, learning_rate=_LR.get(name, 1e-3))}
         for name in registry.OPTIMIZERS}
CASES.update({
    "smoothout": {"swap.smoothout.scale": 0.05, "swap.smoothout.annealing": "linear"},
    "update_noise": {"swap.noise.scale": 1e-3},
    "micro_batch_size": {"swap.micro_batch_size": 4, "swap.optimizer": registry.config_block(
        "kfac", learning_rate=0.02)},
})


# Every case on every layout (1 device holding the 4 replicas, 4 devices holding one each) and
# execution; K < D is test_two_replicas_on_four_devices_are_normal_two_device_runs.
# LARS multiplies each layer's update by λ = η‖w‖/(‖g‖ + β‖w‖), a ratio of sums over the layer:
# the vmapped step's gradients (grouped convolutions, summed in another order) move it by ~1e-5
# relative, measured 1.85e-6 absolute on weights of ~0.2 after 2 steps (the same before the
# move to shard_map). Every other case holds 1e-6.
TOLERANCE = {"lars": 5e-6}
ALL_LAYOUTS = tuple((n, execution) for n in (1, 4) for execution in swap.EXECUTIONS[1:])


def _replica_config(config, k):
  """Replica k's normal run written out from the SWAP paper's recipe, independently of
  `swap.phase2_config`: seed + 1 + k, and config.swap's batch, length, micro-batch, optimizer,
  schedule, update noise and SmoothOut."""
  c = config.copy_and_resolve_references()
  c.unlock()
  c.seed = config.seed + 1 + k
  c.batch_size, c.num_epochs = config.swap.batch_size, config.swap.num_epochs
  c.micro_batch_size = config.swap.micro_batch_size
  for block in ("optimizer", "schedule", "noise", "smoothout"):
    c[block] = config.swap[block].copy_and_resolve_references()
  c.swap.enabled = False
  c.lock()
  return c


@pytest.mark.parametrize("case", sorted(CASES))
def test_replica_k_is_the_normal_one_device_run_of_phase2_config_k(case):
  """Replica k after 2 phase-2 steps == the normal one-device run of replica k's config (written
  out independently, `_replica_config`) from the same phase-1 weights: every case with vmap and
  loop, on 1 device (4 replicas on it) and on 4 (one replica each)."""
  config = tiny_config(**CASES[case])
  data = step_lib.load_data(config)
  state1 = _phase1_state(config, data)
  refs = [_normal_run(_replica_config(config, k), data, state1, 2, jax.devices()[:1])
          for k in range(4)]
  for n, execution in ALL_LAYOUTS:
    got = _swap_replicas(config, data, state1, 2, execution, jax.devices()[:n])
    assert got.step.tolist() == [2] * 4 and got.seed.tolist() == [1, 2, 3, 4]
    for k in range(4):
      _same_replica(_take(got, k), refs[k], tol=TOLERANCE.get(case, 1e-6))
  # The replicas differ (own data order, augmentation and keys).
  assert max(np.abs(a[0] - a[1]).max() for a in jax.tree.leaves(got.params)) > 1e-5


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_two_replicas_on_four_devices_are_normal_two_device_runs(execution):
  """K < D: each replica data-parallel over its own 2 devices (gradients, BatchNorm and K-FAC
  statistics averaged within the pair) == the normal 2-device run of its config; with K-FAC,
  micro-batches, Ghost BN, SmoothOut, update noise and SWA all on."""
  config = tiny_config(**{
      "swap.num_replicas": 2, "swap.micro_batch_size": 4, "model.ghost_batch_size": 2,
      "swap.optimizer": registry.config_block("kfac", learning_rate=0.02),
      "swap.smoothout.scale": 0.02, "swap.noise.scale": 1e-3, "swa.enabled": True,
      "swa.period": 1})
  data = step_lib.load_data(config)
  state1 = _phase1_state(config, data)
  got = _swap_replicas(config, data, state1, 2, execution, jax.devices()[:4])
  for k in range(2):
    ref = _normal_run(swap.phase2_config(config, k), data, state1, 2,
                      jax.devices()[2 * k:2 * k + 2])
    _same_replica(_take(got, k), ref)
  assert got.opt_state.count.tolist() == [2, 2]  # each replica keeps its own SWA average


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
           ({"swap.phase1_stop_accuracy": 1.5}, "config.swap.phase1_stop_accuracy"),
           ({"swap.execution": "pmap"}, "config.swap.execution"),
           ({"swap.micro_batch_size": 5}, "config.swap.micro_batch_size"),
           ({"swap.noise.annealing": "bogus"}, "config.swap.noise.annealing")]
  for overrides, key in cases:
    with pytest.raises(ConfigError) as e:
      runners.validate(tiny_config(**overrides), device_count=4)
    assert e.value.key == key, (overrides, e.value)
  with pytest.raises(ConfigError, match="config.swap.num_replicas"):
    swap.device_groups(4, jax.devices()[:3])


def test_micro_batch_size_is_checked_against_the_phase_it_applies_to():
  # 64 per device divides phase 1's batch; phase 2's 16 examples per replica are not split.
  runners.validate(tiny_config(micro_batch_size=64), device_count=4)
  runners.validate(tiny_config(**{"swap.micro_batch_size": 8}), device_count=4)
  with pytest.raises(ConfigError) as e:
    runners.validate(tiny_config(micro_batch_size=48), device_count=4)
  assert e.value.key == "config.micro_batch_size"


def test_layouts():
  d = jax.devices()[:4]
  assert swap.device_groups(8, d) == [[d[0]], [d[0]], [d[1]], [d[1]], [d[2]], [d[2]], [d[3]],
                                      [d[3]]]
  assert swap.device_groups(2, d) == [[d[0], d[1]], [d[2], d[3]]]
  assert swap.device_groups(1, d) == [d]
  assert swap.resolve_execution("auto", "cpu") == "loop"
  assert swap.resolve_execution("auto", "gpu") == swap.resolve_execution("auto", "tpu") == "vmap"


def _replicas(workdir, config):
  data = step_lib.load_data(config)
  exp = step_lib.build(swap.phase2_config(config), data)
  template = swap.stack([jax.device_get(exp.init_state())] * config.swap.num_replicas)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "phase2", "checkpoints"))
  step, tree = ckpt.restore_latest(template)
  ckpt.close()
  return step, tree


def test_all_phases_run_and_an_interrupted_phase2_resumes(tmp_path, capsys, monkeypatch):
  workdir = str(tmp_path / "swap")
  config = tiny_config()
  summary = runners.run(config, workdir)  # the launcher's call: dispatches to SWAP
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
  # The last line names the model the run reports (the average) and gives its accuracy.
  assert lines[-1] == (f"final test accuracy: {status['result_test_accuracy']:.4f} (SWAP average "
                       "of 4 replicas, BatchNorm recomputed)")
  assert summary["result_test_accuracy"] == summary["test_accuracy"]  # the averaged model
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

  # The disk fills while phase 3 writes the averaged model: one failure naming it, status failed
  # with phase 2's last checkpoint; the rerun after the fault gives the same model.
  shutil.rmtree(os.path.join(workdir, "phase3"))
  save = checkpoint_lib.Checkpointer.save

  def full_disk(self, step, tree):
    if "phase3" in str(self.directory):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return save(self, step, tree)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", full_disk)
  with pytest.raises(workdir_lib.WriteFailure) as failure:
    runners.run(config, workdir)
  monkeypatch.undo()
  ckpt3_dir = os.path.join(workdir, "phase3", "checkpoints")
  assert failure.value.line() == (f"SWAP phase 3's averaged model in {ckpt3_dir}: No space left "
                                  f"on device; the last complete checkpoint is step {final_step}; "
                                  "rerun to resume")
  failed = metrics_lib.read_status(workdir)
  assert failed["status"] == "failed" and failed["checkpoint_step"] == final_step
  again = runners.run(config, workdir)
  assert again["status"] == "completed"
  for key in ("test_accuracy", "test_loss", "replica_test_accuracy"):
    assert again[key] == pytest.approx(status[key], abs=1e-6), key


def test_an_hpo_study_over_a_swap_config_reports_every_phase_and_prunes(tmp_path):
  """An Optuna trial over a SWAP config (the HPO worker's own objective, `lbjax.hpo.worker`):
  intermediate values from phase 1 and phase 2 at increasing steps, and the pruner stops the
  run in phase 2; then the callback of a full run ends on the reported (averaged) model."""
  config = tiny_config(**{"validation_fraction": 0.1, "eval_every_epochs": 0.1,
                          "swap.num_epochs": 0.1, "swap.phase1_stop_accuracy": None})
  with config.unlocked():
    config.search_space = ml_collections.ConfigDict({"lr": {
        "key": "swap.optimizer.learning_rate", "type": "float", "low": 0.02, "high": 0.02}})

  class PruneAtPhase2(optuna.pruners.BasePruner):
    def prune(self, study, trial):
      return len(trial.intermediate_values) == 7  # the first phase-2 value

  study = optuna.create_study(direction="maximize", pruner=PruneAtPhase2())
  objective = worker.make_objective(config, str(tmp_path / "study"),
                                    {"keep_trial_checkpoints": True}, lambda: None)
  study.optimize(objective, n_trials=1)
  trial = study.trials[0]
  # Phase 1: 6 steps of 1293 examples, evaluated after every step (the 6th is its final
  # evaluation); phase 2 (9 steps of 16) evaluates after 8, reported as 6 + 8.
  assert trial.state == optuna.trial.TrialState.PRUNED
  assert sorted(trial.intermediate_values) == [1, 2, 3, 4, 5, 6, 14]
  assert all(0.0 <= v <= 1.0 for v in trial.intermediate_values.values())
  status = metrics_lib.read_status(trial.user_attrs["workdir"])
  assert status["status"] == "stopped" and status["phase"] == 2

  seen = []
  summary = runners.run(config, str(tmp_path / "full"), callback=lambda s, m: seen.append(
      (s, m)) and False)
  assert summary["status"] == "completed"
  assert [s for s, _ in seen] == sorted({s for s, _ in seen})
  _, last = seen[-1]
  assert last["test_accuracy"] == summary["result_test_accuracy"]
  assert last["validation_accuracy"] == summary["result_validation_accuracy"]
