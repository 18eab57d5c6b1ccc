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
from typing import Any, Callable, NamedTuple, Optional

from absl import logging
import flax
from flax import struct
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lbjax import checkpoint as checkpoint_lib
from lbjax import config_lib
from lbjax import metrics as metrics_lib
from lbjax import models
from lbjax import schedules
from lbjax.data import augment
from lbjax.data import datasets
from lbjax.data import pipeline
from lbjax.optim import registry

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


def step_keys(seed: int, step, positions):
  """Per-example keys: ``fold_in(fold_in(PRNGKey(seed), step), position)``.

  ``positions`` is each example's row in the global batch, so the keys, and with them the
  augmentation, do not depend on how the batch is split over devices and hosts.
  """
  step_key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
  return jax.vmap(lambda p: jax.random.fold_in(step_key, p))(positions)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, seed: int,
                    augment_mode: str, num_classes: int, mean, std,
                    learning_rate: optax.Schedule) -> Callable:
  """The per-device train step ``(state, batch) -> (state, metrics)``; pmap it over AXIS."""

  def loss_fn(params, batch_stats, images, targets):
    logits, new_vars = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                   train=True, mutable=["batch_stats"])
    return cross_entropy(logits, targets), (logits, new_vars.get("batch_stats", {}))

  def train_step(state: TrainState, batch):
    keys = step_keys(seed, state.step, batch["position"])
    images, targets = augment.apply(batch, keys, mode=augment_mode, num_classes=num_classes,
                                    mean=mean, std=std, train=True)
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, images, targets)
    grads = lax.pmean(grads, AXIS)
    # BatchNorm already normalises with global-batch statistics (axis_name); averaging the
    # running statistics also keeps replicas identical when ghost batches are local.
    batch_stats = lax.pmean(batch_stats, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    loss = lax.pmean(loss, AXIS)
    accuracy = lax.pmean(jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1)), AXIS)
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

  return train_step


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

  def init_state(self) -> TrainState:
    return init_state(self.model, self.tx, self.data.train["image"].shape[1:], self.config.seed)

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
  tx = registry.build(config.optimizer, learning_rate)
  model = create_model(config, data.num_classes)
  mean, std = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)
  train_step = make_train_step(model, tx, seed=config.seed, augment_mode=config.augment,
                               num_classes=data.num_classes, mean=mean, std=std,
                               learning_rate=learning_rate)
  eval_step = make_eval_step(model, num_classes=data.num_classes, mean=mean, std=std,
                             augment_mode=config.augment)
  return Experiment(config, data, model, tx, learning_rate, steps_per_epoch, total_steps,
                    train_step, eval_step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config`` in ``workdir``, resuming from its latest checkpoint; returns the summary.

  The summary has ``status`` (completed | diverged | preempted), ``step`` and the final
  ``test_accuracy`` / ``test_loss`` (and ``validation_*`` when a validation split exists).
  """
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
  if restored_step is not None:
    print(f"lbjax: resuming from step {start} of {total_steps} ({workdir})", flush=True)
    writer.truncate_after(start)
  if primary:
    metrics_lib.write_status(workdir, "running", start)

  p_train_step = jax.pmap(exp.train_step, axis_name=AXIS, donate_argnums=(0,))
  p_eval_step = jax.pmap(exp.eval_step, axis_name=AXIS)
  state = flax.jax_utils.replicate(state)
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
      save = step % config.checkpoint_every_steps == 0 or is_last or preemption.requested
      if step % config.log_every_steps == 0 or save or step % eval_every == 0:
        bad_step = flush(step)
        if bad_step is not None:
          status, step = "diverged", bad_step
          break
      if step % eval_every == 0 and not is_last:
        run_eval(step)
      if save:
        ckpt.save(step, _first_replica(state))
      if preemption.requested and not is_last:
        status = "preempted"
        break
  if progress is not None:
    progress.close()
  ckpt.close()

  if status == "diverged":
    print(f"lbjax: training diverged (non-finite loss) at step {step}", flush=True)
  elif status == "completed":
    results = run_eval(step)
  writer.close()
  if primary:
    metrics_lib.write_status(workdir, status, step, total_steps=total_steps, **results)
  summary = {"status": status, "step": step, **results}
  if status == "completed":
    print(f"final test accuracy: {results['test_accuracy']:.4f}", flush=True)
  elif status == "preempted":
    print(f"lbjax: preempted at step {step}; rerun the same command to resume", flush=True)
  return summary
