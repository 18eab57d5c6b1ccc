"""Uniform noise added to every update, seed 001 eq. (1), with optional annealing of its scale."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lbjax.optim import checks
from lbjax.optim.rng import NOISE_STREAM


class AddUniformNoiseState(NamedTuple):
  """Steps taken and the key of the next draw (a raw uint32 key, so it checkpoints as data)."""
  count: jax.Array  # shape=(), dtype=int32
  rng_key: jax.Array  # shape=(2,), dtype=uint32


def uniform_like(key: jax.Array, tree, scale=1.0) -> optax.Updates:
  r"""A tree like ``tree`` of independent draws :math:`\delta \sim U(-s, s)` in each leaf's dtype.

  ``scale`` is a scalar :math:`s`; one key per leaf, split from ``key``.
  """
  unit = optax.tree.random_like(
      key, tree, sampler=functools.partial(jax.random.uniform, minval=-1.0, maxval=1.0))
  return jax.tree.map(lambda u: (scale * u).astype(u.dtype), unit)


def add_uniform_noise(scale: optax.ScalarOrSchedule, seed: int = 0
                      ) -> optax.GradientTransformation:
  r"""Adds :math:`\delta_t \sim U(-s_t, s_t)` to every element of every update: seed 001 eq. (1).

  Chained after an optimizer whose update is :math:`-\eta\nabla E(\theta_t)`, this is

  .. math::
    \theta_{t+1} = \theta_t - \eta \nabla E(\theta_t) + \delta_t, \qquad
    \delta_t \sim U(-s_t, s_t) \text{ i.i.d. per element}.

  :math:`s_t` = ``scale`` is a float or a schedule of the step. Seed 001 uses a constant
  :math:`s` (1e-n) and names the decay of the noise norm, as in simulated annealing, as future
  work; ``lbjax.schedules.build_annealed(..)`` gives exponential, linear and cosine annealing.

  Every replica must add the *same* noise, or data-parallel copies of the weights drift apart.
  The key is therefore part of the optimizer state, initialised from ``seed`` alone (on a stream
  of its own, ``lbjax.optim.rng.NOISE_STREAM``) and split once per step (as ``optax.add_noise``
  does); it never depends on the device, so replicated state draws bit-identical noise on every
  device and host, and a restored checkpoint continues the same sequence.

  Args:
    scale: :math:`s_t`, the half-width of the uniform distribution, a float or a schedule.
    seed: seed of the noise key.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> tx = optax.chain(optax.sgd(0.1, momentum=0.9),
    ...                  add_uniform_noise(optax.exponential_decay(1e-3, 1000, 0.01), seed=0))

  References:
    Seed 001 (Naganuma & Yokota, noise injection for large-batch training), eq. (1).
    Wen et al., "SmoothOut: Smoothing Out Sharp Minima to Improve Generalization in Deep
    Learning", arXiv:1805.07898, 2018.
  """

  checks.non_negative("scale", scale)

  def init_fn(params):
    del params
    return AddUniformNoiseState(count=jnp.zeros([], jnp.int32),
                                rng_key=jax.random.fold_in(jax.random.PRNGKey(seed),
                                                           NOISE_STREAM))

  def update_fn(updates, state, params=None):
    del params
    s = scale(state.count) if callable(scale) else scale
    rng_key, sample_key = jax.random.split(state.rng_key)
    noise = uniform_like(sample_key, updates, s)
    updates = jax.tree.map(lambda u, d: u + d, updates, noise)
    return updates, AddUniformNoiseState(count=optax.safe_increment(state.count), rng_key=rng_key)

  return optax.GradientTransformation(init_fn, update_fn)
