r"""Stochastic weight averaging (Izmailov et al. 2018), seed 000 eq. (1), and BatchNorm recompute.

Seed 000 eq. (1): every ``period`` optimizer steps from ``start_step`` the current weights
:math:`W` join the running average

.. math::
  W_{swa} \leftarrow \frac{W_{swa} \cdot n_{models} + W}{n_{models} + 1},

where :math:`n_{models}` counts the weights averaged so far. :func:`running_average` is the
equation; :func:`swa` wraps any optimizer so the average lives in its state (an optax
``GradientTransformation``: checkpointed, replicated or vmapped with the rest of the state).
``config.swa`` turns it on for a normal run (`from_config`); under SWAP (``config.swap``) each
phase-2 replica averages its own weights and phase 3 averages those averages.

BatchNorm statistics are never averaged: the running statistics of an averaged network are
recomputed by one pass over the training data (`recompute_batch_stats`), with the semantics of
``torch.optim.swa_utils.update_bn``: the network runs in training mode (each normalisation layer
normalises with its batch moments), and each layer's statistics become the *equal-weight average*
over the batches of its batch mean and batch variance (``momentum=None``, a cumulative moving
average), not an exponential moving average.
"""

import math
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lbjax.data import augment
from lbjax.data import pipeline
from lbjax.errors import ConfigError
from lbjax.models import layers


class SwaState(NamedTuple):
  """State of :func:`swa`: the wrapped optimizer's state and eq. (1)'s running average."""
  inner_state: optax.OptState
  average: optax.Params  # W_swa
  count: jax.Array       # n_models, int32
  step: jax.Array        # updates applied so far, int32


def running_average(average: optax.Params, count: jax.Array, params: optax.Params
                    ) -> tuple[optax.Params, jax.Array]:
  """Seed 000 eq. (1): ``(W_swa·n + W) / (n + 1)`` and ``n + 1``."""
  n = jnp.asarray(count).astype(jnp.float32)
  new = jax.tree.map(lambda a, w: ((a * n + w) / (n + 1.0)).astype(a.dtype), average, params)
  return new, count + 1


def swa(inner: optax.GradientTransformation, *, start_step: int, period: int = 1
        ) -> optax.GradientTransformationExtraArgs:
  r"""Wraps ``inner`` so that its state also keeps the SWA average of the weights.

  After update :math:`t` (the weights :math:`W_t = W_{t-1} + u_t`), if :math:`t \ge`
  ``start_step`` and :math:`(t - \text{start\_step}) \bmod \text{period} = 0`, :math:`W_t` joins the
  average by seed 000 eq. (1). The updates themselves are ``inner``'s, unchanged.

  Args:
    inner: the optimizer whose iterates are averaged.
    start_step: first update whose weights are averaged (>= 1).
    period: updates between two averaged weights (>= 1).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with `SwaState`; ``update`` needs ``params``.
    Extra keyword arguments are passed on to ``inner``.

  Example:
    >>> tx = swa(optax.sgd(0.1), start_step=100, period=10)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)   # state.average: W_swa

  References:
    Izmailov, Podoprikhin, Garipov, Vetrov & Wilson, "Averaging Weights Leads to Wider Optima and
    Better Generalization", UAI 2018. Seed 000 eq. (1).
  """
  if start_step < 1 or period < 1:
    raise ValueError(f"swa: start_step and period must be >= 1, got {start_step}, {period}")
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return SwaState(inner_state=inner.init(params),
                    average=jax.tree.map(jnp.zeros_like, params),
                    count=jnp.zeros([], jnp.int32), step=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra):
    if params is None:
      raise ValueError("swa: update() needs params (the weights to average)")
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra)
    step = state.step + 1
    take = (step >= start_step) & ((step - start_step) % period == 0)
    average, count = running_average(state.average, state.count,
                                     optax.apply_updates(params, updates))
    average = jax.tree.map(lambda new, old: jnp.where(take, new, old), average, state.average)
    count = jnp.where(take, count, state.count)
    return updates, SwaState(inner_state, average, count, step)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def enabled(config: ml_collections.ConfigDict) -> bool:
  block = config.get("swa")
  return block is not None and bool(block.enabled)


def start_step(config: ml_collections.ConfigDict, steps_per_epoch: float) -> int:
  """``config.swa.start_epoch`` in optimizer steps (at least 1: the first update's weights)."""
  return max(1, int(round(config.swa.start_epoch * steps_per_epoch)))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for a bad ``config.swa`` block (absent: nothing to check)."""
  block = config.get("swa")
  if block is None:
    return
  if not isinstance(block.enabled, bool):
    raise ConfigError("config.swa.enabled", f"must be True or False, got {block.enabled!r}")
  period = block.period
  if isinstance(period, bool) or not isinstance(period, int) or period < 1:
    raise ConfigError("config.swa.period", f"must be an integer >= 1 (steps), got {period!r}")
  start = block.start_epoch
  if isinstance(start, bool) or not isinstance(start, (int, float)) or start < 0:
    raise ConfigError("config.swa.start_epoch", f"must be a number >= 0, got {start!r}")
  swap = config.get("swap")
  # Under SWAP the average is of phase 2, whose config (lbjax/swap.py:phase2_config) is checked.
  if block.enabled and start >= config.num_epochs and not (swap is not None and swap.enabled):
    raise ConfigError("config.swa.start_epoch",
                      f"averaging starts at epoch {start}, after training ends "
                      f"({config.num_epochs} epochs): nothing would be averaged")


def from_config(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                steps_per_epoch: float) -> optax.GradientTransformation:
  """``tx`` wrapped by :func:`swa` when ``config.swa.enabled``, else ``tx`` itself."""
  if not enabled(config):
    return tx
  return swa(tx, start_step=start_step(config, steps_per_epoch), period=config.swa.period)


def averaged_params(opt_state: Any) -> tuple[optax.Params, jax.Array]:
  """``(W_swa, n_models)`` from the state of an optimizer built by :func:`from_config`."""
  if not isinstance(opt_state, SwaState):
    raise ValueError("the optimizer state holds no SWA average (config.swa.enabled is False)")
  return opt_state.average, opt_state.count


# BatchNorm recompute ------------------------------------------------------------------------


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
      (e.g. :func:`batch_moments` of a batch, jitted or pmapped).
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


def recompute_on_train_data(exp, params, batch_stats, *, batch_size: Optional[int] = None,
                            devices: Optional[Sequence[jax.Device]] = None):
  """`recompute_batch_stats` over one pass of ``exp``'s training data.

  The pass is ``ceil(N / batch_size)`` consecutive global batches of the training stream of
  ``exp.config.seed`` (every example at least once), augmented as in training, split over the
  devices with the moments averaged over them (global-batch moments, as in training).

  Args:
    exp: a ``lbjax.train.Experiment``.
    params: weights replicated over the local devices (or ``devices``), leading axis.
    batch_stats: statistics replicated likewise (only their structure is used).
    batch_size: global batch of the pass (default ``exp.config.batch_size``).
    devices: run on these devices of this process only; default: every device of every process,
      each process reading its shard of every batch, as the train loop does.

  Returns:
    The recomputed statistics, replicated like ``params``.
  """
  from lbjax import train  # pylint: disable=g-import-not-at-top  (train imports this module)
  config, data = exp.config, exp.data
  batch_size = batch_size or config.batch_size
  mean, std = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)

  def moments(params, batch_stats, batch):
    keys = train.step_keys(config.seed, batch["step"], batch["position"])
    images, _ = augment.apply(batch, keys, mode=config.augment, num_classes=data.num_classes,
                              mean=mean, std=std, train=True)
    return batch_moments(exp.model, params, batch_stats, images)

  if devices is None:
    p_moments = jax.pmap(moments, axis_name=train.AXIS)
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                 local_device_count=jax.local_device_count())
  else:
    devices = list(devices)
    p_moments = jax.pmap(moments, axis_name=train.AXIS, devices=devices)
    shard = dict(local_device_count=len(devices))

  def batches():
    for k in range(math.ceil(len(data.train["label"]) / batch_size)):
      batch = pipeline.train_batch(data.train, k, batch_size=batch_size, seed=config.seed,
                                   **shard)
      batch["step"] = np.full((shard["local_device_count"],), k, np.int32)
      yield batch

  return recompute_batch_stats(p_moments, params, batch_stats,
                               pipeline.prefetch_to_device(batches(), 2, devices))


def evaluate_average(exp, state, p_eval_step, eval_splits: dict[str, Any]) -> dict[str, float]:
  """The SWA model of a finished run: ``W_swa`` with recomputed BatchNorm, evaluated.

  Args:
    exp: the run's ``lbjax.train.Experiment`` (its optimizer built with ``config.swa``).
    state: the final ``TrainState``, replicated over the local devices.
    p_eval_step: the pmapped eval step.
    eval_splits: ``{"test": split, ...}``.

  Returns:
    ``swa_<split>_loss``, ``swa_<split>_accuracy`` and ``swa_models`` (n_models).
  """
  from lbjax import train  # pylint: disable=g-import-not-at-top
  params, count = averaged_params(state.opt_state)
  batch_stats = recompute_on_train_data(exp, params, state.batch_stats)
  results: dict[str, float] = {"swa_models": int(jax.device_get(count)[0])}
  for name, split in eval_splits.items():
    r = train.evaluate(p_eval_step, params, batch_stats, split,
                       batch_size=exp.config.eval_batch_size)
    results.update({f"swa_{name}_loss": r["loss"], f"swa_{name}_accuracy": r["accuracy"]})
  print(f"swa test accuracy: {results['swa_test_accuracy']:.4f} "
        f"({results['swa_models']} weights averaged)", flush=True)
  return results
