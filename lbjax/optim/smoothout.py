r"""SmoothOut weight perturbation (Wen et al. 2018), which seed 001 names as its method.

Seed 001 cites SmoothOut but writes its method as update noise, eq. (1)
:math:`\theta_{t+1} = \theta_t - \eta\nabla E(\theta_t) + \delta_t` (`lbjax.optim.noise`).
This module is Wen et al.'s SmoothOut proper, the gradient taken at perturbed weights; it is not
the seed's eq. (1) (``configs/seed001_noise.py:method=smoothout`` runs it instead).
"""

import jax
import jax.numpy as jnp
import optax

from lbjax import schedules
from lbjax.optim.noise import uniform_like
from lbjax.optim.rng import SMOOTHOUT_STREAM


def smoothout_key(seed: int, step: jax.Array) -> jax.Array:
  """The perturbation key of ``step``: the same on every device and host.

  ``fold_in(fold_in(PRNGKey(seed), step), SMOOTHOUT_STREAM)``, apart from the augmentation keys
  (``lbjax.optim.rng``).
  """
  step_key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
  return jax.random.fold_in(step_key, SMOOTHOUT_STREAM)


def smoothout_perturb(params, key: jax.Array, scale, adaptive: bool = False):
  r"""Returns :math:`\theta + \delta`, the weights at which SmoothOut takes the gradient.

  .. math::
    \delta_l \sim U(-s_l, s_l) \text{ i.i.d. per element}, \qquad
    s_l = s \text{, or } s \cdot \lVert\theta_l\rVert / \sqrt{n_l} \text{ if adaptive},

  for every parameter tensor :math:`l` with :math:`n_l` elements. SmoothOut averages the loss
  over a box around :math:`\theta`, :math:`\mathbb{E}_\delta L(\theta + \delta)`, which flattens
  sharp minima; one sample per step gives the unbiased gradient
  :math:`\nabla L(\theta + \delta)`, and the update is applied to the *unperturbed*
  :math:`\theta` (Wen et al.'s "denoising" step). This is not seed 001's eq. (1), which adds
  :math:`\delta_t` to the update itself (`lbjax.optim.noise.add_uniform_noise`).

  ``adaptive`` scales each tensor's noise by the tensor's root-mean-square magnitude, so
  :math:`s` is a relative noise level independent of layer size and scale (Wen et al.'s
  AdaSmoothOut scales the noise of each filter by the filter's norm; per tensor here, as
  ``lbjax`` treats layers everywhere else, e.g. LARS).

  Args:
    params: the weights :math:`\theta` (any pytree of float arrays).
    key: a PRNG key; use the same on every replica (``smoothout_key(seed, step)``) so data-
      parallel copies perturb identically.
    scale: :math:`s`, a float or a scalar array (a schedule's value at this step).
    adaptive: scale per tensor by its RMS (False).

  Returns:
    The perturbed weights, same structure and dtypes as ``params``.

  References:
    Wen et al., "SmoothOut: Smoothing Out Sharp Minima to Improve Generalization in Deep
    Learning", arXiv:1805.07898, 2018 (cited by seed 001, Naganuma & Yokota, §2).
  """
  delta = uniform_like(key, params, scale)
  if adaptive:
    delta = jax.tree.map(
        lambda d, p: (d * optax.safe_norm(p, 0.0) / jnp.sqrt(max(p.size, 1))).astype(p.dtype),
        delta, params)
  return jax.tree.map(lambda p, d: p + d, params, delta)


def from_config(config, total_steps: int):
  """``perturb(params, step, seed=config.seed)`` for ``config.smoothout``, or None when its scale
  is 0 (the train step passes its ``state.seed``, so one compiled step serves every seed).

  The train step takes the gradient at ``perturb(params, step)`` and applies the update to
  ``params``. The scale follows ``config.smoothout.annealing`` over ``total_steps``.
  """
  block = config.get("smoothout")
  if block is None or not block.scale > 0:
    return None
  scale = schedules.build_annealed(block, total_steps)
  seed, adaptive = config.seed, bool(block.adaptive)

  def perturb(params, step, seed=seed):  # the train step passes state.seed (traced)
    return smoothout_perturb(params, smoothout_key(seed, step), scale(step), adaptive=adaptive)

  return perturb
