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

BatchNorm statistics are never averaged: the statistics of the averaged weights are recomputed
on the training data and the model evaluated by `lbjax.evaluation.evaluate_averaged`, which SWA,
SWAP and `lbjax.analysis` share. This module is the optax transformation and its accessor
`averaged_params` only (as optax exposes ``contrib.schedule_free_eval_params``).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lbjax.errors import ConfigError


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
  return max(1, round(config.swa.start_epoch * steps_per_epoch))


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
  # Under SWAP the average is of phase 2, whose config (lbjax/swap.py:phase2_config) is checked.
  if block.enabled and start >= config.num_epochs:
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
    raise TypeError("the optimizer state holds no SWA average (config.swa.enabled is False)")
  return opt_state.average, opt_state.count
