"""Evaluation: a model on a split, BatchNorm statistics recomputed, averaged weights evaluated.

Shared by every runner (`lbjax.train`, `lbjax.swap`), SWA's final model and `lbjax.analysis`.

BatchNorm statistics are never averaged: the running statistics of averaged weights (SWA's
``W_swa``, seed 000 eq. (1); SWAP's mean of the replicas, seed 000 §3.1; a point on an
interpolation path) are recomputed by one pass over the training data (`recompute_batch_stats`),
with the semantics of ``torch.optim.swa_utils.update_bn``: the network runs in training mode
(each normalisation layer normalises with its batch moments), and each layer's statistics become
the *equal-weight average* over the batches of its batch mean and batch variance
(``momentum=None``, a cumulative moving average), not an exponential moving average.
"""

from collections.abc import Callable, Iterable
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lbjax import mesh as mesh_lib
from lbjax import step as step_lib
from lbjax.data import augment
from lbjax.data import datasets
from lbjax.data import pipeline
from lbjax.models import layers


def evaluate(eval_program, params, batch_stats, split, *, batch_size: int,
             mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
  """Loss and accuracy over every example of ``split``.

  ``eval_program`` is `lbjax.step.Experiment.eval_program` of ``mesh`` (default: every
  device); ``params`` and ``batch_stats`` are replicated over ``mesh`` (`lbjax.mesh`)."""
  mesh = mesh or mesh_lib.data_mesh()
  totals = None
  for batch in mesh_lib.put_batches(pipeline.eval_batches(split, batch_size=batch_size,
                                                          **mesh_lib.host_shard(mesh)), mesh):
    sums = eval_program(params, batch_stats, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = mesh_lib.to_host(totals)
  count = float(totals["count"])
  return {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count}


def eval_splits(data: datasets.Dataset) -> dict[str, Any]:
  """``{"test": ..., "validation": ...}`` (validation only when the data has that split)."""
  splits = {"test": data.test}
  if data.validation is not None:
    splits["validation"] = data.validation
  return splits


def evaluate_splits(exp: step_lib.Experiment, eval_program, params, batch_stats, *,
                    prefix: str = "", mesh: jax.sharding.Mesh | None = None
                    ) -> dict[str, float]:
  """``<prefix><split>_loss`` and ``<prefix><split>_accuracy`` on every split of `eval_splits`
  (`evaluate` on ``mesh``)."""
  results = {}
  for name, split in eval_splits(exp.data).items():
    r = evaluate(eval_program, params, batch_stats, split,
                 batch_size=exp.config.eval_batch_size, mesh=mesh)
    results.update({f"{prefix}{name}_loss": r["loss"], f"{prefix}{name}_accuracy": r["accuracy"]})
  return results


def batch_moments(model: nn.Module, params, batch_stats, images, *,
                  momentum: float = layers.MOMENTUM):
  """The batch moments every normalisation layer of ``model`` sees on ``images``, in training mode.

  Shaped like ``batch_stats`` (``{"mean", "var"}`` per layer). The layers update their running
  statistics as ``m·old + (1 - m)·batch``; applying them with ``old = 0`` and dividing by
  ``1 - m`` reads off the batch moments without changing the model (``lbjax.models.layers``:
  BatchNorm, cross-device BatchNorm and Ghost BN alike, all with momentum ``layers.MOMENTUM``).
  """
  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  _, new = model.apply({"params": params, "batch_stats": zeros}, images, train=True,
                       mutable=["batch_stats"])
  return jax.tree.map(lambda s: s / (1.0 - momentum), new["batch_stats"])


def recompute_batch_stats(moments_fn: Callable, params, batch_stats, batches: Iterable[Any]):
  """BatchNorm statistics of ``params`` by one pass over ``batches`` (torch ``update_bn``).

  Args:
    moments_fn: ``(params, batch_stats, batch) -> batch moments`` shaped like ``batch_stats``
      (e.g. :func:`batch_moments` of a batch, jitted or a data-parallel program).
    params: the (averaged) weights.
    batch_stats: current statistics; only their structure is used.
    batches: the data of the pass.

  Returns:
    For every layer, the mean over the batches of its batch mean and of its batch variance: the
    cumulative moving average ``s ← s + (b − s)/(n + 1)`` of ``update_bn`` with ``momentum=None``.
  """
  if not jax.tree.leaves(batch_stats):
    return batch_stats  # no normalisation layers
  total, count = None, 0
  for batch in batches:
    moments = moments_fn(params, batch_stats, batch)
    total = moments if total is None else jax.tree.map(jnp.add, total, moments)
    count += 1
  if count == 0:
    raise ValueError("recompute_batch_stats: no batches")
  return jax.tree.map(lambda t: t / count, total)


def recompute_on_train_data(exp: step_lib.Experiment, params, batch_stats, *,
                            batch_size: int | None = None,
                            mesh: jax.sharding.Mesh | None = None):
  """`recompute_batch_stats` over one pass of ``exp``'s training data.

  The pass is ``ceil(N / batch_size)`` consecutive global batches of the training stream of
  ``exp.config.seed`` (every example at least once), augmented as in training, split over the
  devices of ``mesh`` with the moments averaged over them (global-batch moments, as in
  training).

  Args:
    exp: the `lbjax.step.Experiment` of the model.
    params: weights replicated over ``mesh``.
    batch_stats: statistics replicated likewise (only their structure is used).
    batch_size: global batch of the pass (default ``exp.config.batch_size``).
    mesh: default: every device of every process (`lbjax.mesh.data_mesh`), each process
      reading its rows of every batch, as the train loop does.

  Returns:
    The recomputed statistics, replicated over ``mesh``.
  """
  config, data = exp.config, exp.data
  batch_size = batch_size or config.batch_size
  mesh = mesh or mesh_lib.data_mesh()
  mean, std = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)

  def moments(params, batch_stats, batch):
    keys = step_lib.step_keys(config.seed, batch["step"][0], batch["position"])
    images, _ = augment.apply(batch, keys, mode=config.augment, num_classes=data.num_classes,
                              mean=mean, std=std, train=True)
    return batch_moments(exp.model, params, batch_stats, images)

  program = mesh_lib.data_parallel(moments, mesh, out_specs=mesh_lib.P(),
                                   in_specs=(mesh_lib.P(), mesh_lib.P(),
                                             mesh_lib.P(step_lib.AXIS)))
  shard = mesh_lib.host_shard(mesh)

  def batches():
    for k in range(math.ceil(len(data.train["label"]) / batch_size)):
      batch = pipeline.train_batch(data.train, k, batch_size=batch_size, seed=config.seed,
                                   **shard)
      batch["step"] = np.full(batch["label"].shape, k, np.int32)  # each row knows its step
      yield batch

  return recompute_batch_stats(program, params, batch_stats,
                               mesh_lib.put_batches(batches(), mesh))


def evaluate_averaged(exp: step_lib.Experiment, eval_program, params, batch_stats, *,
                      prefix: str = "", mesh: jax.sharding.Mesh | None = None
                      ) -> tuple[dict[str, float], Any]:
  """Averaged weights (SWA's ``W_swa``, SWAP's mean of the replicas) as a model: BatchNorm
  statistics recomputed on ``exp``'s training data (`recompute_on_train_data`), then evaluated.

  Args:
    exp: the experiment whose training data (stream of ``exp.config.seed``, batch
      ``exp.config.batch_size``) recomputes the statistics and whose splits are evaluated.
    eval_program: ``exp.eval_program(mesh)``.
    params: the averaged weights, replicated over ``mesh`` (default: every device).
    batch_stats: statistics replicated likewise (only their structure is used).
    prefix: prefix of the result keys (``"swa_"``).
    mesh: the devices of the pass and the evaluation.

  Returns:
    ``(results, batch_stats)``: `evaluate_splits`'s results and the recomputed statistics
    (replicated).
  """
  batch_stats = recompute_on_train_data(exp, params, batch_stats, mesh=mesh)
  return (evaluate_splits(exp, eval_program, params, batch_stats, prefix=prefix, mesh=mesh),
          batch_stats)
