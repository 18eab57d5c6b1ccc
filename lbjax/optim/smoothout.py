"""SmoothOut weight perturbation (Wen et al. 2018), the noise injection seed 001 applies."""

import jax
import jax.numpy as jnp
import optax

from lbjax.optim.noise import uniform_like

# The train step derives the SmoothOut key as fold_in(step_key, SMOOTHOUT_STREAM), where
# step_key = fold_in(PRNGKey(seed), step) also yields each example's augmentation key
# fold_in(step_key, position); no example has this position, so the streams never meet.
SMOOTHOUT_STREAM = 2**32 - 1


def smoothout_key(seed: int, step: jax.Array) -> jax.Array:
  """The perturbation key of ``step``: the same on every device and host."""
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
  :math:`\theta` (Wen et al.'s "denoising" step). Seed 001 applies it to large-batch training
  (its eq. (1), uniform noise).

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
    Learning", arXiv:1805.07898, 2018. Seed 001 (Naganuma & Yokota), §2, eq. (1).
  """
  delta = uniform_like(key, params, scale)
  if adaptive:
    delta = jax.tree.map(
        lambda d, p: (d * optax.safe_norm(p, 0.0) / jnp.sqrt(max(p.size, 1))).astype(p.dtype),
        delta, params)
  return jax.tree.map(lambda p, d: p + d, params, delta)


def from_config(config, total_steps: int):
  """``perturb(params, step)`` for ``config.smoothout``, or None when its scale is 0.

  The train step takes the gradient at ``perturb(params, step)`` and applies the update to
  ``params``. The scale follows ``config.smoothout.annealing`` over ``total_steps``.
  """
  from lbjax import schedules  # pylint: disable=g-import-not-at-top
  block = config.get("smoothout")
  if block is None or not block.scale > 0:
    return None
  scale = schedules.build_annealed(block, total_steps)
  seed, adaptive = config.seed, bool(block.adaptive)

  def perturb(params, step):
    return smoothout_perturb(params, smoothout_key(seed, step), scale(step), adaptive=adaptive)

  return perturb
