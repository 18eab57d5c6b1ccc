r"""SWAP, stochastic weight averaging in parallel (Gupta, Serrano & DeCoste 2020; seed 000 §3.1).

One run, three phases (``config.swap.enabled``):

1. **Large batch.** `phase1_config`: the config as a normal data-parallel run (``config.batch_size``,
   ``config.optimizer``: LARS or SGD in seed 000, ``config.schedule``, ``config.num_epochs``) in
   ``WORKDIR/phase1`` through `lbjax.train.train_and_evaluate`, so it resumes, handles SIGTERM and
   divergence like any run. It ends after ``config.num_epochs`` or, as the SWAP paper stops it,
   at the first evaluation (every ``config.eval_every_epochs``) where the mean training accuracy
   of the last logging window reaches ``config.swap.phase1_stop_accuracy``.
2. **Small-batch replicas.** ``K = config.swap.num_replicas`` copies of the phase-1 weights and
   BatchNorm statistics. Replica ``k`` *is* the normal run of `phase2_config` ``(config, k)``
   from those weights: ``config.swap``'s batch, length, optimizer, schedule, micro-batch, update
   noise and SmoothOut, and its own seed `replica_seed` ``= config.seed + 1 + k`` (its data order,
   augmentation, SmoothOut and K-FAC sampling keys). By construction: every replica runs the step
   `lbjax.step.build` makes of `phase2_config` (augmentation, SmoothOut, update noise, K-FAC
   statistics, SWA, micro-batches, Ghost BN), the seed being data in its `lbjax.step.TrainState`;
   and the one loop, `lbjax.loop.run`, drives them. ``config.swap.execution`` (:data:`EXECUTIONS`):

   * ``"vmap"``: one compiled program over the replica axis (``jax.vmap`` of the step inside a
     ``jax.shard_map`` over the 2-D device mesh ``("replica", "batch")``,
     `lbjax.mesh.replica_mesh`), the design's path on accelerators;
   * ``"loop"``: the same compiled one-replica step (``Experiment.train_program`` on the
     replica's device group) dispatched once per replica;
   * ``"auto"``: :data:`AUTO` by backend, ``loop`` on CPU, where the vmapped convolutions become
     grouped convolutions that XLA:CPU runs about 3x slower than K separate steps
     (``benchmarks/swap_replicas.py``); ``vmap`` elsewhere (on an H100, 0.52x the K separate
     steps for a dispatch-bound resnet_tiny, 1.09x for ResNet-18 at batch 64).

   Both give the same replicas up to float32 rounding: ``loop`` runs the normal run's very
   program (bit-identical), ``vmap`` sums some reductions in another order (a vmapped
   convolution is a grouped one). Measured after 2–3 steps: weights within 1e-6 on CPU; on an
   H100 within 7e-7 with ``jax_default_matmul_precision="highest"``, but 5e-2 apart at the
   default TF32 precision, where the two programs pick differently rounded kernels.

   With D devices: K >= D (D divides K) puts K/D replicas on each device; K < D (K divides D)
   makes each replica data-parallel over its own group of D/K devices, its gradients and
   BatchNorm statistics averaged within the group only (`device_groups`).
   With ``config.swa.enabled`` each replica keeps its SWA average (seed 000 eq. (1)).
3. **Averaging.** The arithmetic mean of the K replicas' weights (of their SWA averages with
   ``config.swa.enabled``), BatchNorm statistics recomputed by one pass over the training data
   with phase 1's batch (`lbjax.evaluation.evaluate_averaged`), evaluated. Printed and recorded:
   each replica's test accuracy, their mean, and the averaged model's; the last line is
   ``final test accuracy: X`` of the averaged model, the run's result.

Every evaluation is reported to the callback (`run`), with steps counted across the phases:
phase 1's own, then phase 1's last step plus phase 2's (the intermediate phase-2 evaluations are
of the replicas' current mean, BatchNorm recomputed), and the averaged model at the end.

Workdir::

  WORKDIR/config.json, status.json (phase, step, accuracies), metrics.jsonl (phases 2–3)
  WORKDIR/phase1/              phase 1's own run directory (config, status, metrics, checkpoints)
  WORKDIR/phase2/checkpoints/  the K replica states stacked on a leading axis; step 0 is the
                               phase 1 → 2 boundary, then every checkpoint_every_steps and the end
  WORKDIR/phase3/checkpoints/  the averaged model (params, recomputed batch_stats)

Rerunning the command resumes at the latest of these; a finished run re-evaluates and prints the
same numbers. The replica checkpoints do not depend on the device count or the execution.
"""

from collections.abc import Sequence
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from lbjax import checkpoint as checkpoint_lib
from lbjax import config_lib
from lbjax import evaluation
from lbjax import loop
from lbjax import mesh as mesh_lib
from lbjax import metrics as metrics_lib
from lbjax import step as step_lib
from lbjax import swa
from lbjax import train
from lbjax.errors import ConfigError
from lbjax.errors import check_choice

REPLICA_AXIS = mesh_lib.REPLICA_AXIS
EXECUTIONS = ("auto", "vmap", "loop")
AUTO = {"cpu": "loop"}  # backend -> execution; any other backend: "vmap"

# Keys of a normal run that phase 2 takes from config.swap (for error messages).
_PHASE2_KEYS = {"config.batch_size": "config.swap.batch_size",
                "config.num_epochs": "config.swap.num_epochs",
                "config.optimizer": "config.swap.optimizer",
                "config.schedule": "config.swap.schedule",
                "config.micro_batch_size": "config.swap.micro_batch_size",
                "config.noise": "config.swap.noise",
                "config.smoothout": "config.swap.smoothout"}


def enabled(config: ml_collections.ConfigDict) -> bool:
  block = config.get("swap")
  return block is not None and bool(block.enabled)


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c = config.copy_and_resolve_references()
  c.unlock()
  return c


def replica_seed(config: ml_collections.ConfigDict, replica: int) -> int:
  """Seed of replica ``replica``'s data order and keys (phase 1 uses ``config.seed``)."""
  return int(config.seed) + 1 + int(replica)


def phase1_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Phase 1: the config itself as a normal run (SWAP and SWA off)."""
  c = _copy(config)
  c.swap.enabled = False
  if "swa" in c:
    c.swa.enabled = False
  c.lock()
  return c


def phase2_config(config: ml_collections.ConfigDict, replica: int = 0) -> ml_collections.ConfigDict:
  """Replica ``replica`` of phase 2 as a normal run config: seed `replica_seed`, and the batch,
  length, optimizer, schedule, micro-batch, update noise and SmoothOut of ``config.swap``
  (``config.swap.noise``/``smoothout`` default to off: phase 1's large-batch noise is not
  carried into the small-batch replicas unless asked for)."""
  c = _copy(config)
  block = config.swap
  c.seed = replica_seed(config, replica)
  c.batch_size = block.batch_size
  c.num_epochs = block.num_epochs
  c.micro_batch_size = block.get("micro_batch_size")
  for key in ("optimizer", "schedule", "noise", "smoothout"):
    if key in block:
      c[key] = block[key].copy_and_resolve_references()
  c.swap.enabled = False
  c.lock()
  return c


def resolve_execution(mode: str, backend: str | None = None, process_count: int = 1) -> str:
  """``"vmap"`` or ``"loop"`` for ``config.swap.execution`` on ``backend`` (default: JAX's);
  with several processes always ``"vmap"`` (one SPMD program over every host's devices).

  Raises:
    ConfigError: ``"loop"`` with several processes (a replica's program would run on one
      host's devices while the others wait).
  """
  check_choice("config.swap.execution", mode, EXECUTIONS)
  if process_count > 1:
    if mode == "loop":
      raise ConfigError("config.swap.execution",
                        f"'loop' runs in one process; with {process_count} processes use 'vmap' "
                        "or 'auto' (one program over every host's devices)")
    return "vmap"
  if mode != "auto":
    return mode
  return AUTO.get(backend or jax.default_backend(), "vmap")


def device_groups(num_replicas: int, devices: Sequence[jax.Device]) -> list[list[jax.Device]]:
  """The devices of each replica: K >= D puts replica k on device ``k // (K/D)``; K < D gives
  replica k the ``D/K`` devices ``[k·D/K, (k+1)·D/K)``.

  Raises:
    ConfigError: neither of K and D divides the other.
  """
  k, d = num_replicas, len(devices)
  try:
    rows, size = mesh_lib.replica_shape(k, d)  # the same layout as `lbjax.mesh.replica_mesh`
  except ValueError as e:
    raise ConfigError("config.swap.num_replicas", str(e)) from None
  per_row = k // rows
  return [list(devices[(i // per_row) * size:(i // per_row + 1) * size]) for i in range(k)]


def _remap(error: ConfigError) -> ConfigError:
  for src, dst in _PHASE2_KEYS.items():
    if error.key == src or error.key.startswith(src + "."):
      return ConfigError(dst + error.key[len(src):], error.message)
  return error


def validate(config: ml_collections.ConfigDict, *, device_count: int, process_count: int = 1
             ) -> None:
  """Raises ConfigError for a bad SWAP config: phase 1 as a normal run on ``device_count``
  devices, the ``config.swap`` block, and phase 2's training keys on one replica's devices
  (errors name the ``config.swap`` key they come from)."""
  config_lib.validate(phase1_config(config), device_count=device_count,
                      process_count=process_count)
  block = config.swap
  k = block.num_replicas
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ConfigError("config.swap.num_replicas", f"must be an integer >= 1, got {k!r}")
  group = len(device_groups(k, list(range(device_count)))[0])
  resolve_execution(block.get("execution", "auto"), process_count=process_count)
  threshold = block.phase1_stop_accuracy
  if threshold is not None and not 0.0 < threshold <= 1.0:
    raise ConfigError("config.swap.phase1_stop_accuracy",
                      f"must be in (0, 1] or None (no threshold), got {threshold!r}")
  try:
    config_lib.validate_training(phase2_config(config), device_count=group)
  except ConfigError as e:
    raise _remap(e) from None


# Phase 2: the replicas ----------------------------------------------------------------------


def stack(trees: Sequence[Any]):
  """Host trees → one host tree with a leading replica axis."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def init_replicas(config: ml_collections.ConfigDict, data, state: step_lib.TrainState
                  ) -> step_lib.TrainState:
  """K copies of ``state``'s weights and statistics at step 0, each with the fresh optimizer
  state of its own run (`phase2_config` ``(config, k)``, whose update noise key is its seed's)
  and its seed; host arrays ``[K, ...]``."""
  states = []
  for k in range(config.swap.num_replicas):
    exp_k = step_lib.build(phase2_config(config, k), data)
    states.append(step_lib.TrainState(
        step=np.zeros((), np.int32), params=state.params, batch_stats=state.batch_stats,
        opt_state=exp_k.tx.init(state.params), seed=np.asarray(exp_k.config.seed, np.int32)))
  return stack(jax.device_get(states))


class Replicas:
  """Phase 2's K replicas on ``devices``: the loop's `lbjax.loop.Trainer`; `step` trains them
  all one step of the one step.

  ``vmap``: one program over the ``("replica", "batch")`` mesh (`lbjax.mesh.replica_mesh`), the
  states one global ``[K, ...]`` tree sharded over ``"replica"``; ``loop``: replica k's state
  replicated over its device group's ``("batch",)`` mesh, stepped by the normal run's program.

  Args:
    exp: the step of `phase2_config` (any replica's: they differ in ``state.seed`` only).
    states: host ``[K, ...]`` (`init_replicas` or a checkpoint).
    execution: ``"vmap"`` or ``"loop"`` (`resolve_execution`).
    devices: default: every device of every process.
    evaluate: ``evaluate(step)`` of the replicas' current mean (the loop's evaluation).

  With several processes (``vmap`` only) every process builds the replicas' global batches and
  contributes the rows of its own devices (``jax.make_array_from_callback``); the states come
  back to every host for a checkpoint (`lbjax.mesh.to_host`).
  """

  def __init__(self, exp: step_lib.Experiment, states: step_lib.TrainState, execution: str,
               devices: Sequence[jax.Device] | None = None, evaluate=None):
    self.exp, self.execution = exp, execution
    devices = list(devices or jax.devices())
    self.seeds = [int(s) for s in np.asarray(states.seed)]
    self.groups = device_groups(len(self.seeds), devices)
    self.group_size = len(self.groups[0])
    self.num_replicas = len(self.seeds)
    self.examples_per_step = self.num_replicas * exp.config.batch_size
    self.noise_scale = exp.noise_scale_batches(self.group_size)  # each replica's devices
    self._evaluate = evaluate
    # By K-FAC's statistics or not (`lbjax.step.Experiment.statistics_at`): True always;
    # False with config.optimizer.factor_update_period > 1.
    kinds = (True,) if exp.plain_parts is None else (True, False)
    if execution == "vmap":
      self.mesh = mesh_lib.replica_mesh(self.num_replicas, devices)
      replica = mesh_lib.P(REPLICA_AXIS)

      def launch(train_step):
        def per_device(states, batches):  # [K/D or 1, ...]: this device's replicas
          return jax.vmap(train_step)(states, batches)

        return mesh_lib.data_parallel(
            per_device, self.mesh, in_specs=(replica, mesh_lib.P(REPLICA_AXIS, step_lib.AXIS)),
            out_specs=replica, donate_argnums=(0,))

      self._step = {kind: launch(exp.device_step(kind)) for kind in kinds}
      self.states = mesh_lib.put_sharded(states, self.mesh, REPLICA_AXIS)
    else:
      self.meshes = [mesh_lib.data_mesh(g) for g in self.groups]
      programs: dict[tuple, Any] = {}
      self._steps = [programs.setdefault(tuple(g), {kind: exp.train_program(m, statistics=kind)
                                                    for kind in kinds})
                     for g, m in zip(self.groups, self.meshes)]
      self.states = [mesh_lib.put_replicated(jax.tree.map(lambda x, k=k: np.asarray(x)[k],
                                                          states), m)
                     for k, m in enumerate(self.meshes)]

  def _batch(self, k: int, step: int):
    return self.exp.train_batch(step, local_device_count=self.group_size, seed=self.seeds[k])

  def step(self, step: int) -> dict[str, Any]:
    """Trains every replica on its batch ``step``; returns the metrics, leading axis K."""
    if self.execution == "vmap":
      # [K, B, ...]: replica k's whole global batch, each process placing its devices' rows.
      batches = stack([self.exp.train_batch(step, local_device_count=1, seed=seed,
                                            process_index=0, process_count=1)
                       for seed in self.seeds])
      batches = jax.tree.map(lambda x: x[:, 0], batches)
      self.states, metrics = self._step[self.exp.statistics_at(step)](
          self.states, mesh_lib.put_sharded(batches, self.mesh, REPLICA_AXIS, step_lib.AXIS))
      return metrics
    metrics = []
    for k, programs in enumerate(self._steps):
      batch = mesh_lib.put_batch(self._batch(k, step), self.meshes[k])
      self.states[k], m = programs[self.exp.statistics_at(step)](self.states[k], batch)
      metrics.append(m)
    return {key: [m[key] for m in metrics] for key in metrics[0]}

  def host_states(self) -> step_lib.TrainState:
    """The replicas' states, host ``[K, ...]``."""
    if self.execution == "vmap":
      return mesh_lib.to_host(self.states)
    return stack([mesh_lib.to_host(s) for s in self.states])

  host_state = host_states

  def evaluate(self, step: int) -> dict[str, float]:
    return self._evaluate(step)


def average_replicas(tree):
  """The arithmetic mean over the leading replica axis (computed in float64)."""
  return jax.tree.map(
      lambda x: np.mean(np.asarray(x, np.float64), axis=0).astype(np.asarray(x).dtype), tree)


def averaged_weights(states: step_lib.TrainState, *, use_swa: bool):
  """Phase 3's weights: the mean of the replicas' weights, or of their SWA averages."""
  return average_replicas(swa.averaged_params(states.opt_state)[0] if use_swa else states.params)


def evaluate_replicas(exp: step_lib.Experiment, states: step_lib.TrainState
                      ) -> dict[str, list[float]]:
  """``<split>_accuracy`` [K] of every replica (its own weights and statistics)."""
  mesh = mesh_lib.data_mesh()
  program = exp.eval_program(mesh)
  each = [evaluation.evaluate_splits(exp, program, mesh_lib.put_replicated(s.params, mesh),
                                     mesh_lib.put_replicated(s.batch_stats, mesh), mesh=mesh)
          for s in (jax.tree.map(lambda x, k=k: np.asarray(x)[k], states)
                    for k in range(len(states.seed)))]
  return {key: [r[key] for r in each] for key in each[0] if key.endswith("_accuracy")}


# The run ------------------------------------------------------------------------------------


def _last_eval(workdir: str) -> dict[str, float]:
  """The last evaluation recorded in ``workdir/metrics.jsonl`` (phase 1's final accuracy)."""
  for record in reversed(metrics_lib.read_metrics(workdir)):
    if "test_accuracy" in record:
      return {k: v for k, v in record.items() if k.startswith(("test_", "validation_"))}
  return {}


def _phase1(config: ml_collections.ConfigDict, workdir: str, data,
            callback: loop.Callback | None) -> tuple[dict[str, Any], Any]:
  """Runs (or resumes) phase 1; returns its summary and, when SWAP goes on, its final state."""
  p1_config, p1_dir = phase1_config(config), os.path.join(workdir, "phase1")
  status = metrics_lib.read_status(p1_dir)
  if status is None or status["status"] not in ("completed", "stopped"):
    threshold = config.swap.phase1_stop_accuracy
    stopped_by_callback = []

    def phase1_callback(step, metrics) -> bool:
      if callback is not None and callback(step, metrics):
        stopped_by_callback.append(step)
        return True
      acc = metrics.get("train_accuracy")
      if threshold is None or acc is None or acc < threshold:
        return False
      print(f"lbjax: SWAP phase 1: training accuracy {acc:.4f} >= {threshold} at step {step}",
            flush=True)
      return True

    print(f"lbjax: SWAP phase 1: large-batch training ({p1_dir})", flush=True)
    summary = train.train_and_evaluate(p1_config, p1_dir, callback=phase1_callback)
    if summary["status"] not in ("completed", "stopped") or stopped_by_callback:
      return summary, None
    status = metrics_lib.read_status(p1_dir)
  exp1 = step_lib.build(p1_config, data)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(p1_dir, "checkpoints"))
  step, state = ckpt.restore_latest(exp1.init_state())
  ckpt.close()
  if step is None or step != status["step"]:
    raise RuntimeError(f"phase 1 ended at step {status['step']} but its checkpoint is at {step}")
  return {"status": "completed", "step": step, **_last_eval(p1_dir)}, state


def run(config: ml_collections.ConfigDict, workdir: str,
        callback: loop.Callback | None = None) -> dict[str, Any]:
  """SWAP's three phases in ``workdir``, resuming where a previous run of it stopped.

  ``callback(step, metrics)`` is called at every evaluation of every phase (steps increase
  across the phases, see the module doc) and may stop the run at any intermediate one (status
  ``stopped``), as for a normal run (`lbjax.train.train_and_evaluate`).

  Returns the summary: ``status`` (completed | diverged | preempted | stopped), ``phase``,
  ``step`` (of the phase it ended in), ``replica_test_accuracy`` [K],
  ``replica_mean_test_accuracy``, ``test_accuracy`` / ``test_loss`` of the averaged model (the
  result: also as ``result_test_accuracy``, and ``result_validation_accuracy`` with a validation
  split) and ``phase1_test_accuracy`` (large batch alone).
  """
  data = step_lib.load_data(config)
  num_replicas = config.swap.num_replicas
  exp = step_lib.build(phase2_config(config), data)  # the replicas' one step
  total = exp.total_steps
  rec = loop.Recorder(workdir, keep=config.keep_checkpoints, every=config.checkpoint_every_steps,
                      timeout_secs=config.checkpoint_timeout_secs,
                      checkpoint_dir=os.path.join(workdir, "phase2", "checkpoints"))
  rec.write_config(config)

  def finish(status: str, phase: int, step: int, **results) -> dict[str, Any]:
    loop.close(rec)
    rec.write_status(status, step, phase=phase, total_steps=total, **results)
    if phase == 2:  # phase 1 printed its own outcome
      loop.print_outcome(status, step, what="SWAP phase 2")
    return {"status": status, "phase": phase, "step": step, **results}

  # Phase 1, unless phase 2 has begun (its step-0 checkpoint is the phase boundary).
  template = stack([jax.device_get(exp.init_state())] * num_replicas)
  restored, states = rec.restore(template)
  p1_dir = os.path.join(workdir, "phase1")
  p1_status = metrics_lib.read_status(p1_dir) or {}
  phase1 = {"phase1_step": p1_status.get("step"),
            **{f"phase1_{k}": v for k, v in _last_eval(p1_dir).items()}}
  if restored is None:
    summary1, state1 = _phase1(config, workdir, data, callback)
    if state1 is None:
      return finish(summary1["status"], 1, summary1["step"])
    phase1 = {f"phase1_{k}": v for k, v in summary1.items() if k != "status"}
    states = init_replicas(config, data, state1)
    rec.save(0, states)
  offset = phase1["phase1_step"]
  start = int(states.step[0])
  rec.write_status("running", start, phase=2, total_steps=total, **phase1)
  execution = resolve_execution(config.swap.get("execution", "auto"),
                                process_count=jax.process_count())
  print(f"lbjax: SWAP phase 2: {num_replicas} replicas x batch {config.swap.batch_size} "
        f"({execution}), step {start} of {total}", flush=True)

  # Phase 2: the one loop over the replicas' one step.
  exp1 = step_lib.build(phase1_config(config), data)  # the BatchNorm pass uses phase 1's batch
  mesh = mesh_lib.data_mesh()
  p_eval = exp1.eval_program(mesh)
  template_stats = jax.tree.map(lambda x: np.asarray(x)[0], states.batch_stats)

  def evaluate_average(weights) -> tuple[dict[str, float], Any]:
    results, stats = evaluation.evaluate_averaged(
        exp1, p_eval, mesh_lib.put_replicated(weights, mesh),
        mesh_lib.put_replicated(template_stats, mesh), mesh=mesh)
    return results, mesh_lib.to_host(stats)

  replicas = Replicas(exp, states, execution, evaluate=lambda _: evaluate_average(
      average_replicas(replicas.host_states().params))[0])
  status, step = loop.run(rec, replicas, start=start, total_steps=total,
                          cadence=loop.Cadence.from_config(config, exp.steps_per_epoch),
                          callback=callback, step_offset=offset)
  if status != "completed":
    return finish(status, 2, step, **phase1)
  states = replicas.host_states()

  # Phase 3: the average of the replicas, BatchNorm recomputed. A storage error writing it ends
  # the run as one of phase 2's writes would (status failed, phase 2's last complete checkpoint).
  ckpt3_dir = os.path.join(workdir, "phase3", "checkpoints")
  with rec.writing(f"SWAP phase 3's averaged model in {ckpt3_dir}"):
    ckpt3 = checkpoint_lib.Checkpointer(ckpt3_dir, keep=1, async_save=False)
    restored3, model = ckpt3.restore_latest(
        {"params": jax.tree.map(lambda x: x[0], states.params), "batch_stats": template_stats})
    if restored3 is None:
      print("lbjax: SWAP phase 3: averaging the replicas and recomputing BatchNorm", flush=True)
      model = {"params": averaged_weights(states, use_swa=swa.enabled(config))}
      results, model["batch_stats"] = evaluate_average(model["params"])
      ckpt3.save(0, model)
    else:  # a finished run, rerun: the same model, evaluated again
      results = evaluation.evaluate_splits(exp1, p_eval,
                                           mesh_lib.put_replicated(model["params"], mesh),
                                           mesh_lib.put_replicated(model["batch_stats"], mesh),
                                           mesh=mesh)
    ckpt3.close()
  for key, each in evaluate_replicas(exp, states).items():
    results.update({f"replica_{key}": each, f"replica_mean_{key}": float(np.mean(each))})
  results.update(train.result_keys(results, use_swa=False))
  rec.write_metrics(total, results)
  if callback is not None:
    callback(offset + total, results)
  for k, acc in enumerate(results["replica_test_accuracy"]):
    print(f"replica {k} test accuracy: {acc:.4f}", flush=True)
  print(f"replicas' mean test accuracy: {results['replica_mean_test_accuracy']:.4f}", flush=True)
  if "phase1_test_accuracy" in phase1:
    print(f"large-batch (phase 1) test accuracy: {phase1['phase1_test_accuracy']:.4f}",
          flush=True)
  print(f"averaged model test accuracy: {results['test_accuracy']:.4f} ({num_replicas} replicas"
        f"{' SWA averages' if swa.enabled(config) else ''}, BatchNorm recomputed)", flush=True)
  summary = finish("completed", 3, total, **phase1, **results)
  print(f"final test accuracy: {results['result_test_accuracy']:.4f} (SWAP average of "
        f"{'the SWA averages of ' if swa.enabled(config) else ''}{num_replicas} replicas, "
        "BatchNorm recomputed)", flush=True)
  return summary
