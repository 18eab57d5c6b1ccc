"""Data-parallel training and evaluation with ``jax.pmap``.

`train_step` is a pure per-device function: the global batch is split over all devices (and
hosts); gradients, the loss and BatchNorm statistics are averaged with ``lax.pmean`` over the
named axis ``"batch"``, so every replica applies the same update and the result does not depend
on the number of devices. On one CPU the same code runs with a device axis of size 1.

`train_and_evaluate(config, workdir)` is the whole job: validate, build, restore the latest
checkpoint, loop, evaluate, checkpoint, and write ``status.json``.
"""

import os
import signal
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

from absl import logging
from flax import struct
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lbjax import accumulate
from lbjax import checkpoint as checkpoint_lib
from lbjax import config_lib
from lbjax import metrics as metrics_lib
from lbjax import models
from lbjax import schedules
from lbjax import swa
from lbjax.data import augment
from lbjax.data import datasets
from lbjax.data import pipeline
from lbjax.optim import kfac_capture
from lbjax.optim import registry
from lbjax.optim import smoothout

AXIS = "batch"


class TrainState(struct.PyTreeNode):
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  return models.create(config.model.name, num_classes, axis_name=AXIS, **kwargs)


def init_state(model: nn.Module, tx: optax.GradientTransformation, image_shape, seed: int
               ) -> TrainState:
  """A fresh (unreplicated) train state; parameters from ``PRNGKey(seed)``."""
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *image_shape), jnp.float32),
                         train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def cross_entropy(logits, targets):
  """Mean softmax cross-entropy against (possibly soft) targets [b, num_classes]."""
  return optax.softmax_cross_entropy(logits, targets).mean()


def soft_accuracy(logits, targets):
  """Mean target weight of the predicted class, ``mean_i targets_i[argmax logits_i]``.

  0/1 accuracy for one-hot targets; for CutMix's mixed targets the credit is the predicted
  label's share of the image (the expected 0/1 accuracy against a label drawn from the
  targets), so a tie between two labels needs no rule.
  """
  predicted = jnp.argmax(logits, -1)
  return jnp.mean(jnp.take_along_axis(targets, predicted[:, None], -1))


def step_keys(seed: int, step, positions):
  """Per-example keys: ``fold_in(fold_in(PRNGKey(seed), step), position)``.

  ``positions`` is each example's row in the global batch, so the keys, and with them the
  augmentation, do not depend on how the batch is split over devices and hosts.
  """
  step_key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
  return jax.vmap(lambda p: jax.random.fold_in(step_key, p))(positions)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    micro_batch_size: Optional[int] = None, **kwargs) -> Callable:
  """The per-device train step ``(state, batch) -> (state, metrics)``; pmap it over AXIS.

  ``kwargs`` are those of :func:`make_step_parts`. With ``micro_batch_size`` the per-device batch
  is processed in micro-batches of that size inside the step (``lax.scan``) and their mean
  gradient makes one optimizer update (``lbjax/accumulate.py``).
  """
  return accumulate.scan_step(make_step_parts(model, tx, **kwargs), micro_batch_size)


def make_step_parts(model: nn.Module, tx: optax.GradientTransformation, *, seed: int,
                    augment_mode: str, num_classes: int, mean, std,
                    learning_rate: optax.Schedule,
                    perturb: Optional[Callable] = None,
                    capture: Optional[Callable] = None) -> accumulate.StepParts:
  """The train step as ``StepParts(terms, apply)``: per-(micro-)batch means, then one update.

  ``perturb(params, step)`` (SmoothOut, ``lbjax.optim.smoothout.from_config``): the gradient is
  taken at the perturbed weights and the update applied to the unperturbed ones.

  ``capture`` (K-FAC, ``lbjax.optim.kfac_capture.from_config``) replaces ``jax.value_and_grad``
  with the same forward/backward pass that also returns the layers' curvature statistics; they are
  averaged over AXIS and passed to ``tx.update`` as ``kfac_stats``.
  """

  def loss_fn(params, batch_stats, images, targets):
    logits, new_vars = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                   train=True, mutable=["batch_stats"])
    return cross_entropy(logits, targets), (logits, new_vars.get("batch_stats", {}))

  def terms(state: TrainState, batch):
    """This device's means over ``batch`` (a micro-batch under accumulation)."""
    keys = step_keys(seed, state.step, batch["position"])
    images, targets = augment.apply(batch, keys, mode=augment_mode, num_classes=num_classes,
                                    mean=mean, std=std, train=True)
    # SmoothOut's δ depends on (seed, step) only, so every replica perturbs identically.
    grad_params = state.params if perturb is None else perturb(state.params, state.step)
    stats = None
    if capture is None:
      (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          grad_params, state.batch_stats, images, targets)
    else:
      (loss, (logits, batch_stats)), grads, stats = capture(
          grad_params, state.batch_stats, images, targets, keys)
    return {"loss": loss, "accuracy": soft_accuracy(logits, targets), "grads": grads,
            "batch_stats": batch_stats, "kfac_stats": stats}

  def apply(state: TrainState, terms):
    # Gradients, loss and K-FAC statistics averaged over AXIS. BatchNorm already normalises
    # with global-batch statistics (axis_name); averaging the running statistics also keeps
    # replicas identical when ghost batches are local.
    terms = lax.pmean(terms, AXIS)
    extra_args = {} if capture is None else {"kfac_stats": terms["kfac_stats"]}
    grads, batch_stats, loss = terms["grads"], terms["batch_stats"], terms["loss"]
    updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra_args)
    params = optax.apply_updates(state.params, updates)

    accuracy = terms["accuracy"]
    param_norm = optax.global_norm(params)
    update_norm = optax.global_norm(updates)
    metrics = {
        "loss": loss,
        "accuracy": accuracy,
        "learning_rate": learning_rate(state.step),
        "grad_norm": optax.global_norm(grads),
        "param_norm": param_norm,
        "update_norm": update_norm,
        "update_ratio": update_norm / (param_norm + 1e-12),
        "finite": jnp.isfinite(loss) & jnp.isfinite(param_norm),
    }
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return accumulate.StepParts(terms, apply)


def make_eval_step(model: nn.Module, *, num_classes: int, mean, std, augment_mode: str
                   ) -> Callable:
  """Per-device ``(params, batch_stats, batch) -> sums``; padded examples have mask 0."""

  def eval_step(params, batch_stats, batch):
    keys = jax.random.split(jax.random.PRNGKey(0), batch["label"].shape[0])
    images, targets = augment.apply(batch, keys, mode=augment_mode, num_classes=num_classes,
                                    mean=mean, std=std, train=False)
    logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
    mask = batch["mask"]
    losses = optax.softmax_cross_entropy(logits, targets)
    correct = jnp.argmax(logits, -1) == batch["label"]
    sums = {"loss": jnp.sum(losses * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}
    return lax.psum(sums, AXIS)

  return eval_step


def evaluate(p_eval_step, params, batch_stats, split, *, batch_size: int) -> dict[str, float]:
  """Loss and accuracy over every example of ``split`` (replicated params)."""
  totals = None
  for batch in pipeline.eval_batches(split, batch_size=batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(),
                                     local_device_count=jax.local_device_count()):
    sums = p_eval_step(params, batch_stats, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(jax.tree.map(lambda x: x[0], totals))
  count = float(totals["count"])
  return {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count}


class _Preemption:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps (then save and exit)."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handler)
      except ValueError:  # not the main thread
        pass
    return self

  def _handler(self, signum, frame):
    del frame
    logging.warning("received signal %d: checkpointing and exiting", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _first_replica(tree):
  return jax.device_get(jax.tree.map(lambda x: x[0], tree))


def replicate(tree, devices: Optional[Sequence[jax.Device]] = None):
  """``tree`` copied to ``devices`` (default: all local) along a new leading axis.

  The arrays carry the sharding ``jax.pmap(..., axis_name=AXIS)`` gives its outputs, so a
  pmapped step compiles once. ``flax.jax_utils.replicate``'s arrays name their mesh axis
  differently, and with jax 0.10 the second call, on the step's own outputs, compiles again.
  """
  devices = jax.local_devices() if devices is None else list(devices)
  sharding = jax.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)), jax.P(AXIS))
  stack = lambda x: np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x))
  return jax.device_put(jax.tree.map(stack, tree), sharding)


class Experiment(NamedTuple):
  """Everything built from a config, shared by training, SWAP, HPO, benchmarks and tests."""
  config: ml_collections.ConfigDict
  data: datasets.Dataset
  model: nn.Module
  tx: optax.GradientTransformation
  learning_rate: optax.Schedule
  steps_per_epoch: float
  total_steps: int
  train_step: Callable      # per-device (state, batch) -> (state, metrics); pmap over AXIS
  eval_step: Callable       # per-device (params, batch_stats, batch) -> sums
  train_parts: accumulate.StepParts  # train_step's pieces, for accumulation on the host

  def init_state(self) -> TrainState:
    return init_state(self.model, self.tx, self.data.train["image"].shape[1:], self.config.seed)

  def pmap_train_step(self, devices: Optional[Sequence[jax.Device]] = None) -> Callable:
    """The host-level ``(replicated state, batch) -> (state, metrics)`` over ``devices``
    (default: all local), state donated: ``jax.pmap(train_step)``, or the host loop of
    micro-steps when ``config.accumulation`` resolves to ``"host"`` (``lbjax/accumulate.py``)."""
    return accumulate.pmap_train_step(
        self.train_parts, self.config.get("micro_batch_size"),
        self.config.get("accumulation", "auto"), axis_name=AXIS, devices=devices)

  def train_batch(self, step: int, local_device_count: Optional[int] = None):
    return pipeline.train_batch(
        self.data.train, step, batch_size=self.config.batch_size, seed=self.config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        local_device_count=local_device_count or jax.local_device_count())


def build(config: ml_collections.ConfigDict, data: Optional[datasets.Dataset] = None
          ) -> Experiment:
  """Builds data, model, optimizer and the per-device step functions of ``config``."""
  if data is None:
    data = datasets.load(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                         validation_fraction=config.validation_fraction, seed=config.seed)
  num_train = len(data.train["label"])
  steps_per_epoch = config_lib.steps_per_epoch(num_train, config.batch_size)
  total_steps = config_lib.total_steps(config.num_epochs, num_train, config.batch_size)
  learning_rate = schedules.build_learning_rate(config, steps_per_epoch, total_steps)
  tx = registry.from_config(config, learning_rate, total_steps)
  tx = swa.from_config(config, tx, steps_per_epoch)  # config.swa: W_swa kept in opt_state
  model = create_model(config, data.num_classes)
  mean, std = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)
  train_parts = make_step_parts(model, tx, seed=config.seed, augment_mode=config.augment,
                                num_classes=data.num_classes, mean=mean, std=std,
                                learning_rate=learning_rate,
                                perturb=smoothout.from_config(config, total_steps),
                                capture=kfac_capture.from_config(config.optimizer, model,
                                                                 cross_entropy))
  train_step = accumulate.scan_step(train_parts, config.get("micro_batch_size"))
  eval_step = make_eval_step(model, num_classes=data.num_classes, mean=mean, std=std,
                             augment_mode=config.augment)
  return Experiment(config, data, model, tx, learning_rate, steps_per_epoch, total_steps,
                    train_step, eval_step, train_parts)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       callback: Optional[Callable[[int, dict], bool]] = None) -> dict[str, Any]:
  """Trains ``config`` in ``workdir``, resuming from its latest checkpoint; returns the summary.

  The summary has ``status`` (completed | diverged | preempted | stopped), ``step`` and the final
  ``test_accuracy`` / ``test_loss`` (and ``validation_*`` when a validation split exists).

  ``callback(step, eval_results)``, if given, runs after every evaluation (intermediate and final)
  with the metrics just written (``test_accuracy``, ``validation_accuracy``, ...). A true return
  at an intermediate evaluation saves a checkpoint and ends the run with status ``stopped``
  (HPO pruning, early stopping; ``lbjax/hpo.py``). The metrics also hold ``train_accuracy`` /
  ``train_loss`` of the last logging window (SWAP's phase-1 training-accuracy threshold).

  With ``config.swap.enabled`` the run is SWAP's three phases (``lbjax/swap.py``), whose phase 1
  comes back here with SWAP switched off.
  """
  if config.get("swap") is not None and config.swap.enabled:
    from lbjax import swap  # pylint: disable=g-import-not-at-top  (swap imports this module)
    return swap.run(config, workdir)
  config_lib.validate(config, device_count=jax.device_count(), process_count=jax.process_count())
  config_lib.check_workdir(config, workdir)
  exp = build(config)
  data, steps_per_epoch, total_steps = exp.data, exp.steps_per_epoch, exp.total_steps
  state = exp.init_state()

  primary = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=1))
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                     keep=config.keep_checkpoints)
  restored_step, state = ckpt.restore_latest(state)
  start = int(state.step)
  writer = metrics_lib.MetricWriter(workdir, enabled=primary)
  # Records after the restored step (or all, without a checkpoint) come from a run killed
  # before its next checkpoint; this run writes them again.
  writer.truncate_after(start)
  if restored_step is not None:
    print(f"lbjax: resuming from step {start} of {total_steps} ({workdir})", flush=True)
  if primary:
    metrics_lib.write_status(workdir, "running", start)

  p_train_step = exp.pmap_train_step()
  p_eval_step = jax.pmap(exp.eval_step, axis_name=AXIS)
  state = replicate(state)
  eval_splits = {"test": data.test}
  if data.validation is not None:
    eval_splits["validation"] = data.validation

  def run_eval(step):
    results = {}
    for name, split in eval_splits.items():
      r = evaluate(p_eval_step, state.params, state.batch_stats, split,
                   batch_size=config.eval_batch_size)
      results.update({f"{name}_loss": r["loss"], f"{name}_accuracy": r["accuracy"]})
    writer.write(step, {**results, "epoch": step / steps_per_epoch})
    return results

  def batches():
    for step in range(start, total_steps):
      yield exp.train_batch(step)

  eval_every = max(1, int(round(config.eval_every_epochs * steps_per_epoch)))
  pending: list[dict] = []
  last_train: dict[str, float] = {}  # the last logged window, for the callback
  status, step = "completed", start
  last_time, last_step = time.time(), start

  def flush(step) -> Optional[int]:
    """Writes the averaged pending metrics; returns the first non-finite step, if any."""
    nonlocal pending, last_time, last_step
    if not pending:
      return None
    fetched = jax.device_get([jax.tree.map(lambda x: x[0], m) for m in pending])
    first_step = step - len(fetched)
    for i, m in enumerate(fetched):
      if not m["finite"]:
        writer.write(first_step + i + 1, {"loss": float(m["loss"]), "diverged": 1})
        pending = []
        return first_step + i + 1
    mean_metrics = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]
                    if k != "finite"}
    now = time.time()
    mean_metrics["images_per_sec"] = (step - last_step) * config.batch_size / (now - last_time)
    mean_metrics["epoch"] = step / steps_per_epoch
    writer.write(step, mean_metrics, prefix="train_")
    last_train.update({f"train_{k}": v for k, v in mean_metrics.items()})
    pending, last_time, last_step = [], now, step
    return None

  progress = None
  if config.progress_bar and primary and start < total_steps:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    progress = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True,
                    mininterval=2.0)
  results: dict[str, Any] = {}
  with _Preemption() as preemption:
    for batch in pipeline.prefetch_to_device(batches(), 2):
      state, m = p_train_step(state, batch)
      pending.append(m)
      step += 1
      if progress is not None:
        progress.update(1)
      is_last = step == total_steps
      # Read the flag once: a signal arriving later in this iteration is handled at the next
      # step, so a preemption never breaks out without the save that goes with it.
      preempted = preemption.requested and not is_last
      save = step % config.checkpoint_every_steps == 0 or is_last or preempted
      if step % config.log_every_steps == 0 or save or step % eval_every == 0:
        bad_step = flush(step)
        if bad_step is not None:
          status, step = "diverged", bad_step
          break
      stop = False
      if step % eval_every == 0 and not is_last:
        eval_results = run_eval(step)
        stop = callback is not None and bool(callback(step, {**last_train, **eval_results}))
      if save or stop:
        ckpt.save(step, _first_replica(state))
      if preempted:
        status = "preempted"
        break
      if stop:
        status = "stopped"
        break
  if progress is not None:
    progress.close()
  ckpt.close()

  if status == "diverged":
    print(f"lbjax: training diverged (non-finite loss) at step {step}", flush=True)
  elif status == "completed":
    results = run_eval(step)
    if swa.enabled(config):  # seed 000 eq. (1): the averaged weights, BatchNorm recomputed
      swa_results = swa.evaluate_average(exp, state, p_eval_step, eval_splits)
      writer.write(step, swa_results)
      results.update(swa_results)
    if callback is not None:
      callback(step, results)
  writer.close()
  if primary:
    metrics_lib.write_status(workdir, status, step, total_steps=total_steps, **results)
  summary = {"status": status, "step": step, **results}
  if status == "completed":
    print(f"final test accuracy: {results['test_accuracy']:.4f}", flush=True)
  elif status == "preempted":
    print(f"lbjax: preempted at step {step}; rerun the same command to resume", flush=True)
  elif status == "stopped":
    print(f"lbjax: stopped by the callback at step {step}", flush=True)
  return summary
