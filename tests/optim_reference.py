"""Shared fixtures of the optimizer tests: random pytrees, a noisy quadratic, and a runner.

The optimizers are checked against NumPy references of the seed equations written in each test
file, in float64, fed the same gradients: the gradient of a noisy quadratic
``L_t(w) = Σ ½ a w² + ξ_t·w`` evaluated at each side's own weights, so rounding differences feed
back through the dynamics as they would in training.
"""

import jax
import numpy as np
import optax

SHAPES = {
    "conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
    "dense": {"kernel": (8, 3), "bias": (3,)},
    "norm": {"scale": (4,), "bias": (4,)},
    "head": {"kernel": (5, 2)},
}


def random_tree(seed: int, dtype=np.float32, scale: float = 1.0):
  """Random arrays in the shapes of SHAPES (several tensors; ndim-1 ones are masked out)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s)).astype(dtype), SHAPES,
                      is_leaf=lambda x: isinstance(x, tuple))


def mask_of(tree):
  """True for kernels (ndim > 1), as ``lbjax.optim.decay_mask``."""
  return jax.tree.map(lambda p: np.ndim(p) > 1, tree)


class NoisyQuadratic:
  """``g_t(w) = a ⊙ w + ξ_t``: fixed curvature ``a`` in [0.5, 2], fresh ``ξ_t ~ N(0, σ²)``."""

  def __init__(self, seed: int, steps: int, sigma: float = 0.5):
    rng = np.random.default_rng(seed + 1000)
    like = random_tree(seed)
    self.a = jax.tree.map(lambda p: rng.uniform(0.5, 2.0, p.shape).astype(np.float32), like)
    self.xi = [jax.tree.map(lambda p: (sigma * rng.standard_normal(p.shape)).astype(np.float32),
                            like) for _ in range(steps)]

  def grad64(self, w, t):
    """float64 gradient at float64 weights (for the NumPy references)."""
    return jax.tree.map(lambda a, x, p: a.astype(np.float64) * p + x.astype(np.float64),
                        self.a, self.xi[t], w)


def run(tx: optax.GradientTransformation, params, quad: "NoisyQuadratic", steps: int,
        states: list | None = None):
  """``steps`` jitted updates on ``quad``; returns the weights after each step (NumPy).
  ``states``, if a list, receives the optimizer state after each step."""

  @jax.jit
  def step(params, state, xi):
    grads = jax.tree.map(lambda a, x, p: a.astype(p.dtype) * p + x.astype(p.dtype),
                         quad.a, xi, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  history = []
  for t in range(steps):
    params, state = step(params, state, quad.xi[t])
    history.append(jax.device_get(params))
    if states is not None:
      states.append(jax.device_get(state))
  return history


def to64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def max_rel_error(actual, expected):
  """max over tensors of ‖actual − expected‖∞ / ‖expected‖∞ (per tensor, so small tensors count)."""
  errs = jax.tree.map(
      lambda a, e: float(np.max(np.abs(np.asarray(a, np.float64) - e))
                         / max(np.max(np.abs(e)), 1e-30)), actual, expected)
  return max(jax.tree.leaves(errs))


def assert_trajectories_close(actual, expected, tol=1e-6):
  """Every step, every element: ``|a − e| <= tol + tol·|e|``.

  The weights start O(1) (N(0, 1)), so ``tol`` is relative to the scale of the trajectory; a
  pure relative test would fail on elements that pass near 0 (a float32 run carries absolute
  rounding errors of ~1e-7 there, not relative ones).
  """
  assert len(actual) == len(expected)
  for t, (a, e) in enumerate(zip(actual, expected)):
    for path, x, y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(a),
                          jax.tree.leaves(e)):
      np.testing.assert_allclose(np.asarray(x, np.float64), y, rtol=tol, atol=tol,
                                 err_msg=f"step {t + 1}, {jax.tree_util.keystr(path[0])}")
