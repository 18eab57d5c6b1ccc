r"""SWAP, stochastic weight averaging in parallel (Gupta, Serrano & DeCoste 2020; seed 000 §3.1).

One run, three phases (``config.swap.enabled``):

1. **Large batch.** The config as a normal data-parallel run (``config.batch_size``,
   ``config.optimizer``: LARS or SGD in seed 000, ``config.schedule``, ``config.num_epochs``) in
   ``WORKDIR/phase1`` through `lbjax.train.train_and_evaluate`, so it resumes, handles SIGTERM and
   divergence like any run. It ends after ``config.num_epochs`` or, as the SWAP paper stops it,
   at the first evaluation (every ``config.eval_every_epochs``) where the mean training accuracy
   of the last logging window reaches ``config.swap.phase1_stop_accuracy``.
2. **Small-batch replicas.** ``K = config.swap.num_replicas`` copies of the phase-1 weights and
   BatchNorm statistics, each with a fresh ``config.swap.optimizer`` (SGD in seed 000) and
   ``config.swap.schedule``, batch ``config.swap.batch_size`` and ``config.swap.num_epochs``.
   Replica ``k`` has its own seed `replica_seed` ``= config.seed + 1 + k``, which fixes both its
   data order (the step-indexed stream of `lbjax.data.pipeline`) and its augmentation keys: it
   is exactly the normal one-device run of `phase2_config` ``(config, k)``. The K replicas are
   trained as **one** ``jax.vmap`` over a leading replica axis (`make_replicas_step`), split
   over the local devices with ``jax.pmap`` (K a multiple of the device count). With
   ``config.swa.enabled`` each replica also keeps its SWA average (seed 000 eq. (1)).
3. **Averaging.** The arithmetic mean of the K replicas' weights (of their SWA averages with
   ``config.swa.enabled``), BatchNorm statistics recomputed by one pass over the training data
   (`lbjax.swa.recompute_on_train_data`), evaluated. Printed and recorded: each replica's test
   accuracy, their mean, and the averaged model's; the last line is ``final test accuracy: X``
   of the averaged model.

Workdir::

  WORKDIR/config.json, status.json (phase, step, accuracies), metrics.jsonl (phases 2–3)
  WORKDIR/phase1/              phase 1's own run directory (config, status, metrics, checkpoints)
  WORKDIR/phase2/checkpoints/  the K replica states stacked on a leading axis; step 0 is the
                               phase 1 → 2 boundary, then every checkpoint_every_steps and the end
  WORKDIR/phase3/checkpoints/  the averaged model (params, recomputed batch_stats)

Rerunning the command resumes at the latest of these; a finished run re-evaluates and prints the
same numbers. The replica checkpoints do not depend on the device count.
"""

import os
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import flax
import jax
import ml_collections
import numpy as np

from lbjax import checkpoint as checkpoint_lib
from lbjax import config_lib
from lbjax import metrics as metrics_lib
from lbjax import swa as swa_lib
from lbjax import train
from lbjax.data import datasets
from lbjax.data import pipeline
from lbjax.errors import ConfigError

REPLICA_AXIS = "replicas"

# Top-level keys that phase 2 takes from config.swap (for error messages).
_PHASE2_KEYS = {"config.batch_size": "config.swap.batch_size",
                "config.num_epochs": "config.swap.num_epochs",
                "config.optimizer": "config.swap.optimizer",
                "config.schedule": "config.swap.schedule"}


def enabled(config: ml_collections.ConfigDict) -> bool:
  block = config.get("swap")
  return block is not None and bool(block.enabled)


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c = config.copy_and_resolve_references()
  c.unlock()
  return c


def replica_seed(config: ml_collections.ConfigDict, replica: int) -> int:
  """Seed of replica ``replica``'s data order and augmentation (phase 1 uses ``config.seed``)."""
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
  """Replica ``replica`` of phase 2 as a normal run config: ``config.swap``'s batch, length,
  optimizer and schedule, seed `replica_seed`. Update noise and SmoothOut belong to phase 1."""
  c = _copy(config)
  c.seed = replica_seed(config, replica)
  c.batch_size = config.swap.batch_size
  c.num_epochs = config.swap.num_epochs
  c.optimizer = config.swap.optimizer.copy_and_resolve_references()
  c.schedule = config.swap.schedule.copy_and_resolve_references()
  for block in ("noise", "smoothout"):
    if block in c:
      c[block].scale = 0.0
  c.swap.enabled = False
  c.lock()
  return c


def _phase2_key(key: str) -> str:
  for src, dst in _PHASE2_KEYS.items():
    if key == src or key.startswith(src + "."):
      return dst + key[len(src):]
  return key


def validate(config: ml_collections.ConfigDict, *, device_count: int, process_count: int = 1
             ) -> None:
  """Raises ConfigError for a bad ``config.swap`` block (nothing to check when it is off)."""
  if not enabled(config):
    return
  block = config.swap
  if process_count > 1:
    raise ConfigError("config.swap.enabled", "SWAP runs in one process (its replicas split over "
                      f"that process's devices); got {process_count} processes")
  k = block.num_replicas
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ConfigError("config.swap.num_replicas", f"must be an integer >= 1, got {k!r}")
  if k % device_count:
    raise ConfigError("config.swap.num_replicas",
                      f"{k} replicas cannot be split evenly over the {device_count} devices; use "
                      f"a multiple of {device_count}")
  threshold = block.phase1_stop_accuracy
  if threshold is not None and not 0.0 < threshold <= 1.0:
    raise ConfigError("config.swap.phase1_stop_accuracy",
                      f"must be in (0, 1] or None (no threshold), got {threshold!r}")
  try:
    config_lib.validate(phase2_config(config), device_count=1)
  except ConfigError as e:
    message = str(e)[len(e.key) + 2:]
    raise ConfigError(_phase2_key(e.key), message) from None


# Phase 2: K replicas as one vmap ------------------------------------------------------------


def make_replicas_step(exp: train.Experiment) -> Callable:
  """``(seeds [R], states [R, 1, ...], batches [R, 1, b, ...]) -> (states, metrics [R, 1])``.

  One ``jax.vmap`` over the leading replica axis of `lbjax.train.make_train_step` with a per-replica
  (traced) seed. Inside, each replica is the usual per-device step vmapped over a device axis of
  size 1 named ``train.AXIS``, so its ``pmean``s (gradients, BatchNorm moments) run over that
  replica alone, exactly as a one-device run.
  """
  mean = np.asarray(exp.data.mean, np.float32)
  std = np.asarray(exp.data.std, np.float32)

  def replica_step(seed, state, batch):
    step = train.make_train_step(exp.model, exp.tx, seed=seed, augment_mode=exp.config.augment,
                                 num_classes=exp.data.num_classes, mean=mean, std=std,
                                 learning_rate=exp.learning_rate)
    return jax.vmap(step, axis_name=train.AXIS)(state, batch)

  return jax.vmap(replica_step)


def make_replicas_eval(exp: train.Experiment) -> Callable:
  """``(params [R, 1, ...], batch_stats [R, 1, ...], batch [1, b, ...]) -> sums [R, 1]``."""

  def replica_eval(params, batch_stats, batch):
    return jax.vmap(exp.eval_step, axis_name=train.AXIS)(params, batch_stats, batch)

  return jax.vmap(replica_eval, in_axes=(0, 0, None))


def _split(tree, num_devices: int, inner_axis: bool = True):
  """Host ``[K, ...]`` → ``[D, K/D, (1,) ...]`` (the 1 is each replica's own device axis)."""
  def split(x):
    x = np.asarray(x)
    x = x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])
    return x[:, :, None] if inner_axis else x
  return jax.tree.map(split, tree)


def replicas_from_devices(tree):
  """Device ``[D, K/D, 1, ...]`` (as `train_replicas` yields them) → host ``[K, ...]``."""
  return jax.tree.map(lambda x: np.asarray(x).reshape(-1, *x.shape[3:]), jax.device_get(tree))


def replica_batch(split: pipeline.Batch, step: int, seeds: Sequence[int], batch_size: int
                  ) -> pipeline.Batch:
  """Phase-2 batch ``step`` of every replica, ``[K, 1, b, ...]``: replica ``k`` reads the stream
  of seed ``seeds[k]`` exactly as its one-device run does."""
  batches = [pipeline.train_batch(split, step, batch_size=batch_size, seed=s) for s in seeds]
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def init_replicas(exp: train.Experiment, state: train.TrainState, num_replicas: int
                  ) -> train.TrainState:
  """K copies of the phase-1 weights and statistics, step 0 and a fresh phase-2 optimizer."""
  one = train.TrainState(step=np.zeros((), np.int32), params=state.params,
                         batch_stats=state.batch_stats, opt_state=exp.tx.init(state.params))
  return jax.tree.map(lambda x: np.repeat(np.asarray(x)[None], num_replicas, 0),
                      jax.device_get(one))


def train_replicas(exp: train.Experiment, replicas: train.TrainState, seeds: Sequence[int], *,
                   stop: int, devices: Optional[Sequence[jax.Device]] = None
                   ) -> Iterator[tuple[int, Any, dict]]:
  """Trains the replicas (host ``[K, ...]``) from their step to ``stop``, one vmap per step.

  Yields ``(step, states, metrics)`` after every step: the states and metrics on the devices,
  ``[D, K/D, 1, ...]`` (`replicas_from_devices` brings the states back as ``[K, ...]``). The
  states are donated to the next step: use them before resuming the iterator.

  Raises:
    ConfigError: ``config.swap.num_replicas`` is not a multiple of the device count.
  """
  devices = list(devices or jax.local_devices())
  num_devices, k = len(devices), len(seeds)
  if k % num_devices:
    raise ConfigError("config.swap.num_replicas",
                      f"{k} replicas cannot be split evenly over the {num_devices} devices; use a "
                      f"multiple of {num_devices}")
  start = int(np.asarray(replicas.step).reshape(-1)[0])
  p_step = jax.pmap(make_replicas_step(exp), axis_name=REPLICA_AXIS, devices=devices,
                    donate_argnums=(1,))
  sharding = jax.NamedSharding(jax.sharding.Mesh(np.array(devices), (REPLICA_AXIS,)),
                               jax.P(REPLICA_AXIS))
  seeds_d = jax.device_put(_split(np.asarray(seeds, np.int32), num_devices, False), sharding)
  states = jax.device_put(_split(replicas, num_devices), sharding)
  batches = (_split(replica_batch(exp.data.train, s, seeds, exp.config.batch_size), num_devices,
                    inner_axis=False) for s in range(start, stop))
  for step, batch in zip(range(start + 1, stop + 1),
                         pipeline.prefetch_to_device(batches, 2, devices)):
    states, metrics = p_step(seeds_d, states, batch)
    yield step, states, metrics


def evaluate_replicas(exp: train.Experiment, replicas: train.TrainState, split, *,
                      batch_size: int, devices: Optional[Sequence[jax.Device]] = None
                      ) -> dict[str, np.ndarray]:
  """Loss and accuracy ``[K]`` of every replica (its own weights and statistics) on ``split``."""
  devices = list(devices or jax.local_devices())
  p_eval = jax.pmap(make_replicas_eval(exp), axis_name=REPLICA_AXIS, devices=devices,
                    in_axes=(0, 0, None))
  params = _split(replicas.params, len(devices))
  batch_stats = _split(replicas.batch_stats, len(devices))
  totals = None
  for batch in pipeline.eval_batches(split, batch_size=batch_size):
    sums = p_eval(params, batch_stats, batch)
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  totals = {k: np.asarray(v, np.float64).reshape(-1) for k, v in jax.device_get(totals).items()}
  return {"loss": totals["loss"] / totals["count"], "accuracy": totals["correct"] / totals["count"]}


# Phase 3 ------------------------------------------------------------------------------------


def average_replicas(tree):
  """The arithmetic mean over the leading replica axis (computed in float64)."""
  return jax.tree.map(
      lambda x: np.mean(np.asarray(x, np.float64), axis=0).astype(np.asarray(x).dtype), tree)


def averaged_model(exp: train.Experiment, replicas: train.TrainState, *, use_swa: bool,
                   devices: Optional[Sequence[jax.Device]] = None) -> dict[str, Any]:
  """Phase 3's model: the mean of the replicas' weights (or of their SWA averages) with BatchNorm
  statistics recomputed over one pass of ``exp``'s training data (host arrays)."""
  devices = list(devices or jax.local_devices())
  weights = swa_lib.averaged_params(replicas.opt_state)[0] if use_swa else replicas.params
  params = average_replicas(weights)
  template = jax.tree.map(lambda x: np.asarray(x)[0], replicas.batch_stats)
  batch_stats = swa_lib.recompute_on_train_data(
      exp, flax.jax_utils.replicate(params, devices),
      flax.jax_utils.replicate(template, devices), devices=devices)
  return {"params": params, "batch_stats": jax.tree.map(lambda x: np.asarray(x[0]),
                                                        jax.device_get(batch_stats))}


# The run ------------------------------------------------------------------------------------


def _last_eval(workdir: str) -> dict[str, float]:
  """The last evaluation recorded in ``workdir/metrics.jsonl`` (phase 1's final test accuracy)."""
  for record in reversed(metrics_lib.read_metrics(workdir)):
    if "test_accuracy" in record:
      return {k: v for k, v in record.items() if k.startswith(("test_", "validation_"))}
  return {}


def _phase1(config: ml_collections.ConfigDict, workdir: str, data: datasets.Dataset
            ) -> tuple[dict[str, Any], Optional[train.TrainState]]:
  """Runs (or resumes) phase 1; returns its summary and, when it has ended, its final state."""
  p1_config, p1_dir = phase1_config(config), os.path.join(workdir, "phase1")
  status = metrics_lib.read_status(p1_dir)
  if status is None or status["status"] not in ("completed", "stopped"):
    threshold = config.swap.phase1_stop_accuracy

    def reached(step, metrics) -> bool:
      acc = metrics.get("train_accuracy")
      if threshold is None or acc is None or acc < threshold:
        return False
      print(f"lbjax: SWAP phase 1: training accuracy {acc:.4f} >= {threshold} at step {step}",
            flush=True)
      return True

    print(f"lbjax: SWAP phase 1: large-batch training ({p1_dir})", flush=True)
    summary = train.train_and_evaluate(p1_config, p1_dir, callback=reached)
    if summary["status"] not in ("completed", "stopped"):
      return summary, None
    status = metrics_lib.read_status(p1_dir)
  exp1 = train.build(p1_config, data)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(p1_dir, "checkpoints"))
  step, state = ckpt.restore_latest(exp1.init_state())
  ckpt.close()
  if step is None or step != status["step"]:
    raise RuntimeError(f"phase 1 ended at step {status['step']} but its checkpoint is at {step}")
  return {"status": "completed", "step": step, **_last_eval(p1_dir)}, state


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """SWAP's three phases in ``workdir``, resuming where a previous run of it stopped.

  Returns the summary: ``status`` (completed | diverged | preempted), ``phase``, ``step`` (of
  phase 2), ``replica_test_accuracy`` [K], ``replica_mean_test_accuracy``, ``test_accuracy`` /
  ``test_loss`` of the averaged model and ``phase1_test_accuracy`` (large batch alone).
  """
  config_lib.validate(config, device_count=jax.device_count(), process_count=jax.process_count())
  config_lib.check_workdir(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  data = datasets.load(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                       validation_fraction=config.validation_fraction, seed=config.seed)
  num_replicas = config.swap.num_replicas
  seeds = [replica_seed(config, k) for k in range(num_replicas)]
  exp = train.build(phase2_config(config), data)  # the replicas' model, optimizer and schedule
  total = exp.total_steps

  def finish(status: str, phase: int, step: int, **results) -> dict[str, Any]:
    metrics_lib.write_status(workdir, status, step, phase=phase, total_steps=total, **results)
    if status == "preempted":
      print(f"lbjax: preempted in SWAP phase {phase}; rerun the same command to resume",
            flush=True)
    return {"status": status, "phase": phase, "step": step, **results}

  # Phase 1, unless phase 2 has begun (its step-0 checkpoint is the phase boundary).
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "phase2", "checkpoints"),
                                     keep=config.keep_checkpoints)
  template = jax.tree.map(lambda x: np.repeat(np.asarray(x)[None], num_replicas, 0),
                          jax.device_get(exp.init_state()))
  restored, replicas = ckpt.restore_latest(template)
  p1_status = metrics_lib.read_status(os.path.join(workdir, "phase1")) or {}
  phase1 = {"phase1_step": p1_status.get("step"),
            **{f"phase1_{k}": v for k, v in _last_eval(os.path.join(workdir, "phase1")).items()}}
  if restored is None:
    summary1, state1 = _phase1(config, workdir, data)
    if state1 is None:
      ckpt.close()
      return finish(summary1["status"], 1, summary1["step"])
    phase1 = {f"phase1_{k}": v for k, v in summary1.items() if k not in ("status",)}
    replicas = init_replicas(exp, state1, num_replicas)
    ckpt.save(0, replicas)
  start = int(replicas.step[0])
  metrics_lib.write_status(workdir, "running", start, phase=2, total_steps=total, **phase1)
  writer = metrics_lib.MetricWriter(workdir)
  writer.truncate_after(start)
  print(f"lbjax: SWAP phase 2: {num_replicas} replicas x batch {config.swap.batch_size}, "
        f"step {start} of {total}", flush=True)

  # Phase 2.
  status, step, pending = "completed", start, []
  last_time, last_step = time.time(), start
  with train._Preemption() as preemption:  # pylint: disable=protected-access
    for step, states, metrics in train_replicas(exp, replicas, seeds, stop=total):
      pending.append(metrics)
      is_last = step == total
      preempted = preemption.requested and not is_last  # read once, as in train.py
      save = step % config.checkpoint_every_steps == 0 or is_last or preempted
      if step % config.log_every_steps == 0 or save:
        fetched = jax.device_get(pending)
        rows = {k: np.stack([np.asarray(m[k]).reshape(-1) for m in fetched])  # [steps, K]
                for k in fetched[0]}
        if not rows["finite"].all():
          step = step - len(fetched) + 1 + int(np.argmin(rows["finite"].all(1)))
          writer.write(step, {"diverged": 1})
          status = "diverged"
          break
        now = time.time()
        writer.write(step, {
            "loss": float(rows["loss"].mean()), "accuracy": float(rows["accuracy"].mean()),
            "replica_accuracy": rows["accuracy"].mean(0).tolist(),
            "learning_rate": float(rows["learning_rate"][-1, 0]),
            "update_ratio": float(rows["update_ratio"].mean()),
            "epoch": step / exp.steps_per_epoch,
            "images_per_sec": (step - last_step) * num_replicas * config.swap.batch_size
                              / (now - last_time)}, prefix="train_")
        pending, last_time, last_step = [], now, step
      if save:
        replicas = replicas_from_devices(states)
        ckpt.save(step, replicas)
      if preempted:
        status = "preempted"
        break
  ckpt.close()
  if status != "completed":
    writer.close()
    if status == "diverged":
      print(f"lbjax: SWAP phase 2 diverged (non-finite loss) at step {step}", flush=True)
    return finish(status, 2, step, **phase1)

  # Phase 3.
  exp1 = train.build(phase1_config(config), data)  # the pass over the data uses phase 1's batch
  ckpt3 = checkpoint_lib.Checkpointer(os.path.join(workdir, "phase3", "checkpoints"), keep=1,
                                      async_save=False)
  model_template = jax.tree.map(lambda x: x[0], {"params": template.params,
                                                 "batch_stats": template.batch_stats})
  restored3, model = ckpt3.restore_latest(model_template)
  if restored3 is None:
    print("lbjax: SWAP phase 3: averaging the replicas and recomputing BatchNorm", flush=True)
    model = averaged_model(exp1, replicas, use_swa=swa_lib.enabled(config))
    ckpt3.save(0, model)
  ckpt3.close()

  results: dict[str, Any] = {}
  p_eval = jax.pmap(exp1.eval_step, axis_name=train.AXIS)
  params = flax.jax_utils.replicate(model["params"])
  batch_stats = flax.jax_utils.replicate(model["batch_stats"])
  eval_splits = {"test": data.test}
  if data.validation is not None:
    eval_splits["validation"] = data.validation
  for name, split in eval_splits.items():
    each = evaluate_replicas(exp, replicas, split, batch_size=config.eval_batch_size)
    avg = train.evaluate(p_eval, params, batch_stats, split, batch_size=config.eval_batch_size)
    results.update({f"replica_{name}_accuracy": each["accuracy"].tolist(),
                    f"replica_mean_{name}_accuracy": float(each["accuracy"].mean()),
                    f"{name}_loss": avg["loss"], f"{name}_accuracy": avg["accuracy"]})
  writer.write(total, results)
  writer.close()
  for k, acc in enumerate(results["replica_test_accuracy"]):
    print(f"replica {k} test accuracy: {acc:.4f}", flush=True)
  print(f"replicas' mean test accuracy: {results['replica_mean_test_accuracy']:.4f}", flush=True)
  if "phase1_test_accuracy" in phase1:
    print(f"large-batch (phase 1) test accuracy: {phase1['phase1_test_accuracy']:.4f}",
          flush=True)
  print(f"averaged model test accuracy: {results['test_accuracy']:.4f} ({num_replicas} replicas"
        f"{' SWA averages' if swa_lib.enabled(config) else ''}, BatchNorm recomputed)",
        flush=True)
  summary = finish("completed", 3, total, **phase1, **results)
  print(f"final test accuracy: {results['test_accuracy']:.4f}", flush=True)
  return summary
