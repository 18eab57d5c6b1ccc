r"""Hessian sharpness of a trained model: top eigenvalues, trace, Keskar's ε-sharpness, the
spectral density and the sharpness of each module.

The three numbers the large-batch literature compares (seeds 000 and 001 explain the large-batch
accuracy gap by sharp versus flat minima):

* the **largest Hessian eigenvalues** :math:`\lambda_1 \ge \dots \ge \lambda_k` of the training
  loss (PyHessian, Yao et al. 2020), from Hessian-vector products and ARPACK's Lanczos iteration
  (``scipy.sparse.linalg.eigsh``);
* the **Hessian trace** by Hutchinson's estimator with Rademacher probes,
  :math:`\operatorname{tr} H \approx \frac1m \sum_{j=1}^m z_j^\top H z_j`,
  :math:`z_j \in \{-1, +1\}^n` (Hutchinson 1990; Yao et al. 2020 Alg. 2);
* **ε-sharpness** (Keskar, Mudigere, Nocedal, Smelyanskiy & Tang, "On Large-Batch Training for
  Deep Learning: Generalization Gap and Sharp Minima", ICLR 2017, §2.1, eq. (4) with
  :math:`A = I_n`): the largest relative increase of the loss in the box
  :math:`C_\varepsilon = \{\delta : |\delta_i| \le \varepsilon(|\theta_i| + 1)\}`,

  .. math::
    \phi_{\theta,f}(\varepsilon) = \frac{\max_{\delta \in C_\varepsilon} f(\theta + \delta)
      - f(\theta)}{1 + f(\theta)} \times 100.

Beyond these three: the **eigenvalue density** of the Hessian by stochastic Lanczos quadrature
(`spectral_density`; Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019; PyHessian Alg. 3),
whose outliers and bulk show where the large eigenvalues sit, and per **module** (a layer's
kernel and bias, a BatchNorm's scale and offset) the top eigenvalue and trace of the Hessian's
diagonal block of its parameters (`layer_sharpness`), which say which layers are sharp.

The Hessian-vector product is forward-over-reverse, :math:`Hv = \partial_t \nabla f(\theta + tv)
|_{t=0}` (``jax.jvp`` of ``jax.grad``): one forward and one backward pass with tangents, about
the cost of two gradients, never the :math:`n \times n` matrix. Each function takes any scalar
``loss_fn(params)`` over a parameter pytree; the flat vector is ``jax.flatten_util.ravel_pytree``'s.

The command restores the model a finished run reports (`lbjax.analysis.runs.restore`: the
trained weights; with ``config.swa.enabled`` the SWA average with BatchNorm recomputed; for a SWAP
run phase 3's average), names it, and measures its training loss::

    python -m lbjax.analysis.sharpness --workdir=RUN [--k=3] [--batches=N] [--density] [--layers]

The loss is the mean cross-entropy over the first ``N`` training batches of the run's stream
(``config.batch_size`` each, unaugmented: evaluation preprocessing) with **BatchNorm in evaluation
mode** (``train=False``: the model's running statistics, not the batch's), so the loss is one
fixed deterministic function of the weights whose Hessian is well defined. The batches are split
over the local devices: every Hessian-vector product, loss and gradient is one ``jit(shard_map)``
program over their mesh (`lbjax.mesh`) with ``lax.pmean`` of the per-device result, summed over
the batches on the host in float64. The numbers go to ``RUN/sharpness.json`` and a table to
stdout; ``--density`` adds ``RUN/density.png`` (and the arrays to the JSON), ``--layers`` a
second table, one line per module.
"""

from collections.abc import Callable, Sequence
import functools
import json
import os
import sys
import time
from typing import Any, NamedTuple

from absl import app
from absl import flags
from absl import logging
import jax
from jax import lax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
from jax.sharding import PartitionSpec
import numpy as np
import optax
import scipy.optimize
import scipy.sparse.linalg

from lbjax import mesh as mesh_lib
from lbjax.analysis import lanczos
from lbjax.analysis import runs
from lbjax.data import augment
from lbjax.data import pipeline
from lbjax.errors import ConfigError

SHARPNESS_FILE = "sharpness.json"
# Keskar et al. (2017) §2.1: "we solve (4) inexactly by applying 10 iterations of L-BFGS-B".
KESKAR_ITERATIONS = 10


class Objective(NamedTuple):
  """A scalar loss near ``x0`` as host functions of flat float64 vectors.

  ``hvp`` is the Hessian at ``x0`` times ``v`` (``[n]`` or a stack ``[m, n]``); the device
  computes in the parameters' dtype (matrix products at full precision), the host sees float64.
  """
  x0: np.ndarray                                            # [n] float64: the parameters
  value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]]
  hvp: Callable[[np.ndarray], np.ndarray]


def _full_precision(fn: Callable) -> Callable:
  """``fn`` run with float32 matrix products at full precision (``"highest"``: no TF32 or
  bfloat16 passes on GPUs and TPUs; no effect on CPUs). A Hessian-vector product is a derivative
  of the gradient and keeps none of the digits the products round away."""

  @functools.wraps(fn)
  def wrapped(*args):
    with jax.default_matmul_precision("highest"):
      return fn(*args)

  return wrapped


def _hvp(loss_fn: Callable, params, v):
  """Forward-over-reverse Hessian-vector product of ``loss_fn`` at ``params`` (pytrees)."""
  return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def objective(loss_fn: Callable[[Any], jnp.ndarray], params) -> Objective:
  """`Objective` of ``loss_fn`` at ``params`` on the default device (functions jitted once)."""
  flat, unravel = ravel_pytree(params)
  dtype = flat.dtype

  @jax.jit
  def value_and_grad(x):
    value, grad = jax.value_and_grad(loss_fn)(unravel(x))
    return value, ravel_pytree(grad)[0]

  @jax.jit
  def hvp_stack(vs):
    p = unravel(flat)
    return jax.vmap(lambda v: ravel_pytree(_hvp(loss_fn, p, unravel(v)))[0])(vs)

  @_full_precision
  def host_value_and_grad(x):
    value, grad = value_and_grad(jnp.asarray(x, dtype))
    return float(value), np.asarray(grad, np.float64)

  return Objective(np.asarray(flat, np.float64), host_value_and_grad,
                   _stacked(lambda vs: np.asarray(hvp_stack(jnp.asarray(vs, dtype)), np.float64)))


def _stacked(hvp_stack: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
  """Lets an ``[m, n] -> [m, n]`` product also take one ``[n]`` vector."""

  @_full_precision
  def hvp(v):
    v = np.asarray(v, np.float64)
    return hvp_stack(v[None])[0] if v.ndim == 1 else hvp_stack(v)

  return hvp


def _start_vector(n: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(n)


def eigenvalues_of(obj: Objective, k: int = 1, seed: int = 0, tol: float = 1e-6) -> np.ndarray:
  """The ``k`` algebraically largest eigenvalues of ``obj``'s Hessian, descending.

  ARPACK's implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``, ``which="LA"``) on a
  float64 ``LinearOperator`` whose product is ``obj.hvp``; the start vector is a standard normal
  draw from ``numpy.random.default_rng(seed)``. ``tol`` is ARPACK's relative accuracy of the
  Ritz values (0 would ask for float64 precision from a float32 product).
  """
  n = obj.x0.size
  if not 1 <= k < n:
    raise ValueError(f"k must be in [1, {n - 1}] for {n} parameters, got {k}")
  op = scipy.sparse.linalg.LinearOperator((n, n), matvec=obj.hvp, matmat=lambda m: obj.hvp(m.T).T,
                                          dtype=np.float64)
  values = scipy.sparse.linalg.eigsh(op, k=k, which="LA", v0=_start_vector(n, seed), tol=tol,
                                     return_eigenvectors=False)
  return np.sort(values)[::-1]


def _rademacher(rng: np.random.Generator, count: int, n: int) -> np.ndarray:
  """``[count, n]`` independent ±1 entries (float64)."""
  return rng.integers(0, 2, size=(count, n)).astype(np.float64) * 2.0 - 1.0


def _hutchinson_sums(obj: Objective, num_samples: int, seed: int, probes_per_call: int,
                     segments: np.ndarray | None = None, num_segments: int = 1) -> np.ndarray:
  r"""``[num_samples, num_segments]``: per Rademacher probe :math:`z_j` and segment :math:`s`,
  :math:`\sum_{i \in s} z_{ji} (H z_j)_i` (``segments[i]``: the segment of coordinate ``i``;
  None: one segment, :math:`z_j^\top H z_j`). The probes are drawn from
  ``numpy.random.default_rng(seed)``, ``probes_per_call`` at a time (the last draw is cut)."""
  rng = np.random.default_rng(seed)
  n = obj.x0.size
  rows = []
  for _ in range(0, num_samples, probes_per_call):
    z = _rademacher(rng, probes_per_call, n)
    terms = z * obj.hvp(z)  # a fixed stack shape: compiled once
    if segments is None:
      rows.append(np.sum(terms, axis=1, keepdims=True))
    else:
      rows.append(np.stack([np.bincount(segments, weights=t, minlength=num_segments)
                            for t in terms]))
  return np.concatenate(rows)[:num_samples]


def trace_samples_of(obj: Objective, num_samples: int = 100, seed: int = 0,
                     probes_per_call: int = 10) -> np.ndarray:
  r"""The ``num_samples`` Hutchinson samples :math:`z_j^\top H z_j`, Rademacher :math:`z_j`.

  Each sample is unbiased for :math:`\operatorname{tr} H`, with variance
  :math:`2 \sum_{i \ne l} H_{il}^2`. The probes are drawn from
  ``numpy.random.default_rng(seed)`` and multiplied ``probes_per_call`` at a time (``vmap``).
  """
  return _hutchinson_sums(obj, num_samples, seed, probes_per_call)[:, 0]


def epsilon_sharpness_of(obj: Objective, epsilon: float = 1e-3, seed: int = 0,
                         max_iterations: int = KESKAR_ITERATIONS) -> dict[str, Any]:
  """Keskar et al. (2017) eq. (4), ``A = I``: see `epsilon_sharpness`; returns the details.

  Returns:
    ``{"sharpness": φ, "loss": f(θ), "max_loss": f(θ + δ), "iterations", "evaluations"}``.
  """
  x0 = obj.x0
  radius = epsilon * (np.abs(x0) + 1.0)
  f0, _ = obj.value_and_grad(x0)
  best = {"loss": f0}

  def negative(delta):
    value, grad = obj.value_and_grad(x0 + delta)
    best["loss"] = max(best["loss"], value)  # every evaluated point lies in the box
    return -value, -grad

  start = radius * np.random.default_rng(seed).uniform(-1.0, 1.0, x0.size)
  result = scipy.optimize.minimize(negative, start, jac=True, method="L-BFGS-B",
                                   bounds=scipy.optimize.Bounds(-radius, radius),
                                   options={"maxiter": max_iterations})
  max_loss = best["loss"]
  return {"sharpness": (max_loss - f0) / (1.0 + f0) * 100.0, "loss": f0, "max_loss": max_loss,
          "iterations": int(result.nit), "evaluations": int(result.nfev)}


def top_eigenvalues(loss_fn: Callable[[Any], jnp.ndarray], params, k: int = 1, seed: int = 0
                    ) -> np.ndarray:
  """The ``k`` largest Hessian eigenvalues of ``loss_fn`` at ``params``, descending.

  Largest means algebraically (ARPACK ``"LA"``): at a minimum they are the sharpest directions
  (PyHessian's top eigenvalues); a negative eigenvalue of larger magnitude is not among them.

  Args:
    loss_fn: scalar ``loss_fn(params)``, differentiable twice.
    params: the parameter pytree (float leaves).
    k: how many eigenvalues, ``1 <= k < n``.
    seed: seeds the Lanczos start vector (``numpy.random.default_rng(seed)``).

  Returns:
    float64 NumPy array ``[k]``.
  """
  return eigenvalues_of(objective(loss_fn, params), k, seed)


def hessian_trace(loss_fn: Callable[[Any], jnp.ndarray], params, num_samples: int = 100,
                  seed: int = 0) -> float:
  r"""Hutchinson's estimate :math:`\frac1m \sum_j z_j^\top H z_j` of the Hessian trace.

  ``num_samples`` Rademacher probes :math:`z_j \in \{\pm 1\}^n` from
  ``numpy.random.default_rng(seed)`` (Hutchinson 1990; PyHessian, Yao et al. 2020 Alg. 2).
  Unbiased; its standard error is :math:`\sqrt{2 \sum_{i \ne l} H_{il}^2 / m}`.
  """
  return float(np.mean(trace_samples_of(objective(loss_fn, params), num_samples, seed)))


def epsilon_sharpness(loss_fn: Callable[[Any], jnp.ndarray], params, epsilon: float = 1e-3,
                      seed: int = 0, *, max_iterations: int = KESKAR_ITERATIONS) -> float:
  r"""Keskar et al. (2017) §2.1 eq. (4) with :math:`A = I_n`: the ε-sharpness, in percent.

  .. math::
    \phi(\varepsilon) = 100 \cdot \frac{\max_{\delta \in C_\varepsilon} f(\theta + \delta)
      - f(\theta)}{1 + f(\theta)}, \qquad
    C_\varepsilon = \{\delta : |\delta_i| \le \varepsilon (|\theta_i| + 1)\ \forall i\}.

  The maximum is searched by projected quasi-Newton ascent: L-BFGS-B (Byrd, Lu, Nocedal & Zhu
  1995, ``scipy.optimize.minimize`` on :math:`-f` with the box as bounds), which is what Keskar
  et al. ran, for ``max_iterations`` iterations (default 10, as they did; each iteration
  projects a gradient step onto the box and line-searches, a few loss-and-gradient evaluations).
  It starts at a point drawn uniformly from the box by ``numpy.random.default_rng(seed)``, so it
  does not stall at a stationary :math:`\theta` where :math:`\nabla f = 0`.

  **Why this bounds it:** every point evaluated lies in :math:`C_\varepsilon`, and the value
  returned is the largest loss among them, so it is a *lower bound* of :math:`\phi` that rises
  monotonically with the iterations. The problem is a non-concave maximisation, so no finite
  number of steps certifies the maximum; but the box is small (ε = 10⁻³), where :math:`f` is
  close to its quadratic model, whose maximum lies at a vertex that the projected steps reach
  coordinate by coordinate within a few iterations (for a separable quadratic, exactly — the test
  compares with its closed form). Keskar et al. report ε = 10⁻³ and 5·10⁻⁴.

  Args:
    loss_fn: scalar ``loss_fn(params)``, differentiable.
    params: the parameter pytree θ.
    epsilon: the box's relative half-width ε.
    seed: seeds the starting point.
    max_iterations: L-BFGS-B iterations.

  Returns:
    φ(ε) in percent (≥ 0).
  """
  return epsilon_sharpness_of(objective(loss_fn, params), epsilon, seed,
                              max_iterations)["sharpness"]


# ----------------------------------------------------------------------------------------------
# The spectrum: its density (stochastic Lanczos quadrature) and the blocks of each module.

# The density's default Gaussian width, as a fraction of the span of the Ritz values.
SIGMA_FRACTION = 0.01
# The density's grid extends this many widths beyond the extreme Ritz values.
GRID_MARGIN = 5.0
# Lanczos steps of each module's block in `layer_sharpness` (capped at the module's size).
LAYER_LANCZOS_STEPS = 48


class Quadrature(NamedTuple):
  """Stochastic Lanczos quadrature: per probe, the Ritz values and their Gauss weights."""
  nodes: list[np.ndarray]    # per probe, θ ascending
  weights: list[np.ndarray]  # per probe, τ (each sums to 1)


def _products(obj: Objective, vectors: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
  """``obj.hvp`` of each of ``vectors``, ``size`` at a time; a short last stack is padded with
  zeros, so the products run with one stack shape, compiled once."""
  out = []
  for start in range(0, len(vectors), size):
    stack = np.stack(vectors[start:start + size])
    used = len(stack)
    if used < size:
      stack = np.concatenate([stack, np.zeros((size - used, stack.shape[1]))])
    out.extend(obj.hvp(stack)[:used])
  return out


def spectral_quadrature_of(obj: Objective, num_probes: int = 10, num_steps: int = 64,
                           seed: int = 0, probes_per_call: int = 10) -> Quadrature:
  r"""Stochastic Lanczos quadrature of ``obj``'s Hessian (Ubaru, Chen & Saad 2017).

  ``num_probes`` Rademacher probes :math:`v_j = z_j / \sqrt n` (``[num_probes, n]`` drawn at once
  from ``numpy.random.default_rng(seed)``), each run ``num_steps`` Lanczos steps
  (`lbjax.analysis.lanczos`, capped at :math:`n`), ``probes_per_call`` probes in lockstep (one
  stacked Hessian-vector product per step; the bases take ``probes_per_call · num_steps · n``
  float64). Probe :math:`j`'s Ritz values :math:`\theta_{jk}` and weights :math:`\tau_{jk}` are
  the Gauss quadrature of its spectral measure :math:`\sum_i (v_j^\top u_i)^2
  \delta_{\lambda_i}`, whose expectation over probes is the spectral density
  :math:`\frac1n \sum_i \delta_{\lambda_i}`.
  """
  if num_probes < 1 or num_steps < 1 or probes_per_call < 1:
    raise ValueError(f"num_probes, num_steps and probes_per_call must be >= 1, got {num_probes}, "
                     f"{num_steps}, {probes_per_call}")
  n = obj.x0.size
  probes = _rademacher(np.random.default_rng(seed), num_probes, n) / np.sqrt(n)
  apply = lambda _, vectors: _products(obj, vectors, probes_per_call)
  nodes, weights = [], []
  for start in range(0, num_probes, probes_per_call):
    for alpha, beta in lanczos.run(apply, list(probes[start:start + probes_per_call]), num_steps):
      theta, tau = lanczos.quadrature(alpha, beta)
      nodes.append(theta)
      weights.append(tau)
  return Quadrature(nodes, weights)


def density_of(quadrature: Quadrature, sigma: float | None = None, num_points: int = 1024
               ) -> tuple[np.ndarray, np.ndarray, float]:
  r"""The smoothed spectral density of a `Quadrature`: ``(grid, density, sigma)``.

  .. math::
    \rho(x) = \frac1P \sum_{j=1}^P \sum_k \tau_{jk}\,
      \frac{1}{\sigma\sqrt{2\pi}} e^{-(x - \theta_{jk})^2 / 2\sigma^2}

  (Lin, Saad & Yang 2016; Ghorbani et al. 2019 §2.2; PyHessian), on ``num_points`` equally
  spaced points from ``GRID_MARGIN`` (5) widths below the smallest Ritz value to 5 above the
  largest, normalised so that its trapezoid integral over the grid is exactly 1 (the Gaussian
  tails beyond 5σ hold 6e-7 of the mass). Its mean is the quadrature's
  :math:`\frac1P \sum_{jk} \tau_{jk} \theta_{jk}`, an unbiased estimate of
  :math:`\operatorname{tr} H / n`; its second moment that of :math:`\operatorname{tr} H^2 / n`,
  plus :math:`\sigma^2`.

  Args:
    quadrature: `spectral_quadrature_of`'s.
    sigma: the Gaussians' width; default ``SIGMA_FRACTION`` (1%) of the span of the Ritz values
      (of their largest magnitude, or 1e-2, if they are all equal), which resolves the outliers
      from the bulk while keeping ~10 grid points per width at the default ``num_points``.
    num_points: points of the grid.

  Raises:
    ValueError: ``sigma`` <= 0, ``num_points`` < 2, or a width below the grid spacing (the
      Gaussians would fall between the points: raise ``num_points`` or ``sigma``).
  """
  theta = np.concatenate(quadrature.nodes)
  tau = np.concatenate(quadrature.weights) / len(quadrature.nodes)
  lo, hi = float(np.min(theta)), float(np.max(theta))
  if sigma is None:
    spread = hi - lo if hi > lo else max(abs(hi), 1.0)
    sigma = SIGMA_FRACTION * spread
  if not sigma > 0:
    raise ValueError(f"sigma must be > 0, got {sigma}")
  if num_points < 2:
    raise ValueError(f"num_points must be >= 2, got {num_points}")
  grid = np.linspace(lo - GRID_MARGIN * sigma, hi + GRID_MARGIN * sigma, num_points)
  spacing = grid[1] - grid[0]
  if sigma < spacing:
    raise ValueError(f"sigma {sigma:.3g} is below the grid spacing {spacing:.3g}: raise "
                     "num_points or sigma")
  z = (grid[:, None] - theta[None, :]) / sigma
  density = np.exp(-0.5 * z * z) @ tau / (sigma * np.sqrt(2 * np.pi))
  return grid, density / np.trapezoid(density, grid), float(sigma)


def modules(params) -> dict[str, np.ndarray]:
  """Module name → the indices of its parameters in the flat vector (``ravel_pytree``'s order).

  A module is the parameter path without its leaf name, ``/``-joined (``"Dense_0"``,
  ``"stage1/block0/Conv_0"``); a leaf at the top of the tree is a module of its own, named by
  its key.
  """
  out: dict[str, list[np.ndarray]] = {}
  offset = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    size = int(np.size(leaf))
    name = jax.tree_util.keystr(path[:-1] if len(path) > 1 else path, simple=True,
                                separator="/") or "params"
    out.setdefault(name, []).append(np.arange(offset, offset + size))
    offset += size
  return {name: np.concatenate(parts) for name, parts in out.items()}


def block_trace_samples_of(obj: Objective, blocks: dict[str, np.ndarray],
                           num_samples: int = 100, seed: int = 0, probes_per_call: int = 10
                           ) -> np.ndarray:
  r"""``[num_samples, len(blocks)]``: Hutchinson samples of each block's trace
  :math:`\operatorname{tr} H_{mm}`, :math:`\sum_{i \in m} z_i (H z)_i` for the *full*
  Rademacher probes :math:`z` of `trace_samples_of` (same ``seed``: a row sums to its sample).

  Unbiased, since :math:`\mathbb E[z_i z_l] = \delta_{il}`: one product per probe serves every
  block. A sample's variance is :math:`\sum_{i < l} H_{il}^2 ([i \in m] + [l \in m])^2`,
  which includes the block's couplings to the others.
  """
  segments = np.empty(obj.x0.size, np.int64)
  for s, idx in enumerate(blocks.values()):
    segments[idx] = s
  return _hutchinson_sums(obj, num_samples, seed, probes_per_call, segments, len(blocks))


def block_top_eigenvalues_of(obj: Objective, blocks: dict[str, np.ndarray], seed: int = 0,
                             num_steps: int = LAYER_LANCZOS_STEPS, probes_per_call: int = 10
                             ) -> np.ndarray:
  r"""``[len(blocks)]``: the largest eigenvalue of each block :math:`H_{mm} = P_m H P_m^\top`.

  The largest Ritz value of ``num_steps`` Lanczos steps (`lbjax.analysis.lanczos`; capped at the
  block's size, where it is exact, else a lower bound that converges first of all Ritz values)
  from a standard normal start drawn from ``numpy.random.default_rng(seed)`` (the blocks in
  order). All blocks advance in lockstep, ``probes_per_call`` Hessian-vector products per call.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  indices = list(blocks.values())
  n = obj.x0.size

  def apply(problems, vectors):
    full = []
    for m, v in zip(problems, vectors):
      x = np.zeros(n)
      x[indices[m]] = v
      full.append(x)
    return [h[indices[m]] for m, h in zip(problems, _products(obj, full, probes_per_call))]

  rng = np.random.default_rng(seed)
  starts = [rng.standard_normal(len(idx)) for idx in indices]
  return np.array([lanczos.quadrature(a, b)[0][-1]
                   for a, b in lanczos.run(apply, starts, num_steps)])


def _per_block(blocks: dict[str, np.ndarray], lambda_max: np.ndarray, trace_samples: np.ndarray
               ) -> dict[str, dict[str, float]]:
  return {name: {"lambda_max": float(lambda_max[m]), "trace": float(np.mean(trace_samples[:, m])),
                 "trace_stderr": _stderr(trace_samples[:, m]), "size": len(idx)}
          for m, (name, idx) in enumerate(blocks.items())}


def layer_sharpness_of(obj: Objective, blocks: dict[str, np.ndarray], num_samples: int = 100,
                       seed: int = 0, num_steps: int = LAYER_LANCZOS_STEPS,
                       probes_per_call: int = 10) -> dict[str, dict[str, float]]:
  """λ_max (`block_top_eigenvalues_of`) and trace (`block_trace_samples_of`) of the Hessian's
  diagonal block of each of ``blocks`` (e.g. `modules`).

  Returns:
    ``{name: {"lambda_max", "trace", "trace_stderr", "size"}}`` in the order of ``blocks``
    (``trace_stderr``: the samples' standard deviation / √``num_samples``).
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  samples = block_trace_samples_of(obj, blocks, num_samples, seed, probes_per_call)
  return _per_block(blocks, block_top_eigenvalues_of(obj, blocks, seed, num_steps,
                                                     probes_per_call), samples)


def spectral_density(loss_fn: Callable[[Any], jnp.ndarray], params, num_probes: int = 10,
                     num_steps: int = 64, sigma: float | None = None, num_points: int = 1024,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  r"""The Hessian's eigenvalue density by stochastic Lanczos quadrature, Gaussian-smoothed.

  ``num_probes`` Rademacher probes, ``num_steps`` Lanczos steps each; each probe's Ritz values
  and Gauss weights broadened by Gaussians of width ``sigma`` (`density_of`; default: 1% of the
  span of the Ritz values) and averaged (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao,
  "An Investigation into Neural Net Optimization via Hessian Eigenvalue Density", ICML 2019;
  PyHessian, Yao et al. 2020 Alg. 3).

  Args:
    loss_fn: scalar ``loss_fn(params)``, differentiable twice.
    params: the parameter pytree.
    num_probes: Rademacher probes (``numpy.random.default_rng(seed)``).
    num_steps: Lanczos steps per probe (capped at the number of parameters).
    sigma: the Gaussians' width (None: the default above).
    num_points: points of the grid.
    seed: seeds the probes.

  Returns:
    ``(grid, density)``, float64 NumPy arrays ``[num_points]``: ``grid`` spans the extreme Ritz
    values with 5σ to spare, and the density integrates to 1 over it (trapezoid rule).
  """
  quad = spectral_quadrature_of(objective(loss_fn, params), num_probes, num_steps, seed)
  grid, density, _ = density_of(quad, sigma, num_points)
  return grid, density


def layer_sharpness(loss_fn: Callable[[Any], jnp.ndarray], params, num_samples: int = 100,
                    seed: int = 0) -> dict[str, dict[str, float]]:
  r"""Per module, the sharpness of the Hessian's diagonal block of that module's parameters.

  For every module (the parameter path without its leaf name, ``/``-joined: ``"Dense_0"``,
  ``"stage1/block0/Conv_0"``; `modules`), ``{"lambda_max": ..., "trace": ...}`` of
  :math:`H_{mm}`: its largest eigenvalue by Lanczos (``LAYER_LANCZOS_STEPS`` steps, exact for a
  module of at most that many parameters) and its trace by Hutchinson's estimator over
  ``num_samples`` Rademacher probes (the probes of `hessian_trace` with the same ``seed``: the
  modules' traces sum to its estimate). See `layer_sharpness_of`.
  """
  details = layer_sharpness_of(objective(loss_fn, params), modules(params), num_samples, seed)
  return {name: {"lambda_max": d["lambda_max"], "trace": d["trace"]}
          for name, d in details.items()}


# ----------------------------------------------------------------------------------------------
# A restored run's training loss, data-parallel.


def data_parallel_objective(batch_loss: Callable[[Any, Any], jnp.ndarray], params,
                            batches: Sequence[Any],
                            devices: Sequence[jax.Device] | None = None) -> Objective:
  """`Objective` of the mean of ``batch_loss(params, batch)`` over ``batches``, over devices.

  Args:
    batch_loss: per-device mean loss over one device batch (leaves ``[b, ...]``).
    params: the parameter pytree (host or device arrays).
    batches: host batches with leaves ``[D, b, ...]`` (D = number of ``devices``, the layout of
      `lbjax.data.pipeline`), all of the same size, so the mean over them is the mean over
      every example.
    devices: default ``jax.local_devices()``.

  Every quantity is one SPMD program over the 1-D mesh of ``devices``
  (`lbjax.mesh.data_parallel`: ``jit(shard_map)``) whose per-device value (loss, gradient or
  Hessian-vector product of the device's rows) is averaged with ``lax.pmean`` over the mesh's
  axis; the weights and vectors are replicated over the mesh (`lbjax.mesh.put_replicated`), each
  batch is one global array sharded over ``"batch"`` (`lbjax.mesh.put_batch`, put on the devices
  once), and the host sums the batches in float64 and divides by their number.
  """
  devices = jax.local_devices() if devices is None else list(devices)
  mesh = mesh_lib.data_mesh(devices)
  flat, unravel = ravel_pytree(params)
  dtype = flat.dtype
  axis = mesh_lib.AXIS

  # Each device differentiates its own rows' loss and the pmean averages, as under pmap
  # (`lbjax.mesh.data_parallel` keeps pmap's semantics: no replication checking).
  def value_and_grad(x, batch):
    value, grad = jax.value_and_grad(batch_loss)(unravel(x), batch)
    return lax.pmean((value, ravel_pytree(grad)[0]), axis)

  def hvp_stack(x, vs, batch):
    p = unravel(x)
    f = lambda q: batch_loss(q, batch)
    return lax.pmean(jax.vmap(lambda v: ravel_pytree(_hvp(f, p, unravel(v)))[0])(vs), axis)

  replicated, sharded = PartitionSpec(), PartitionSpec(axis)
  value_and_grad_program = mesh_lib.data_parallel(value_and_grad, mesh, (replicated, sharded),
                                                  replicated)
  hvp_program = mesh_lib.data_parallel(hvp_stack, mesh, (replicated, replicated, sharded),
                                       replicated)
  batches = [mesh_lib.put_batch(b, mesh) for b in batches]
  replicate = lambda a: mesh_lib.put_replicated(np.asarray(a, dtype), mesh)
  x0 = replicate(flat)

  @_full_precision
  def host_value_and_grad(x):
    x = replicate(x)
    value, grad = 0.0, np.zeros(flat.size)
    for batch in batches:
      v, g = mesh_lib.to_host(value_and_grad_program(x, batch))
      value += float(v)
      grad += np.asarray(g, np.float64)
    return value / len(batches), grad / len(batches)

  def host_hvp(vs):
    vs_on_mesh = replicate(vs)
    total = np.zeros(vs.shape)
    for batch in batches:
      total += np.asarray(mesh_lib.to_host(hvp_program(x0, vs_on_mesh, batch)), np.float64)
    return total / len(batches)

  return Objective(np.asarray(flat, np.float64), host_value_and_grad, _stacked(host_hvp))


def train_loss(solution: runs.Solution) -> Callable[[Any, Any], jnp.ndarray]:
  """``batch_loss(params, batch)``: the mean cross-entropy of the restored model on one device
  batch, preprocessed as in evaluation (no random augmentation) and with BatchNorm in evaluation
  mode (``train=False``: the checkpoint's running statistics)."""
  exp = solution.exp
  data = exp.data
  mean, std = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)
  batch_stats = solution.batch_stats

  def batch_loss(params, batch):
    keys = jax.random.split(jax.random.PRNGKey(0), batch["label"].shape[0])  # unused: eval mode
    images, targets = augment.apply(batch, keys, mode=exp.config.augment,
                                    num_classes=data.num_classes, mean=mean, std=std, train=False)
    logits = exp.model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
    return optax.softmax_cross_entropy(logits, targets).mean()

  return batch_loss


def train_batches(solution: runs.Solution, num_batches: int, batch_size: int | None = None,
                  devices: Sequence[jax.Device] | None = None) -> list[dict]:
  """The first ``num_batches`` global batches of the run's training stream (``config.seed``),
  each ``batch_size`` (default ``config.batch_size``) examples split over ``devices``."""
  config = solution.config
  devices = jax.local_devices() if devices is None else list(devices)
  batch_size = batch_size or config.batch_size
  if batch_size % len(devices):
    raise ConfigError("--batch_size", f"{batch_size} does not split over {len(devices)} devices")
  return [pipeline.train_batch(solution.exp.data.train, i, batch_size=batch_size, seed=config.seed,
                               local_device_count=len(devices)) for i in range(num_batches)]


DENSITY_FILE = "density.png"


def measure(workdir: str, *, k: int = 3, batches: int = 10, trace_samples: int = 100,
            epsilon: float = 1e-3, seed: int = 0, batch_size: int | None = None,
            max_iterations: int = KESKAR_ITERATIONS, density: bool = False,
            num_probes: int = 10, num_steps: int = 64, sigma: float | None = None,
            num_points: int = 1024, layers: bool = False,
            layer_steps: int = LAYER_LANCZOS_STEPS,
            devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
  """The command as a function: measures the model ``workdir`` reports, writes
  ``sharpness.json`` (and with ``density`` ``density.png``).

  The model is `lbjax.analysis.runs.restore`'s: the trained weights, the SWA average with
  BatchNorm recomputed (``config.swa.enabled``) or SWAP's average (``config.swap.enabled``),
  named in ``model``.

  Returns:
    What it writes: ``workdir``, ``model`` (which model of the run, in words), ``step`` (its
    checkpoint's; SWAP: phase 2's last), ``batches``, ``batch_size``, ``devices``,
    ``train_loss``, ``top_eigenvalues`` [k], ``hessian_trace`` with ``hessian_trace_stderr``
    (sample standard deviation / √m) and ``trace_samples``, ``epsilon``, ``epsilon_sharpness``
    (percent) with ``epsilon_max_loss`` and ``epsilon_iterations``, ``seed``, ``batchnorm``,
    ``seconds`` per quantity; with ``density``, ``density``: ``grid`` and ``density``
    [num_points], ``sigma``, ``num_probes``, ``num_steps``, the probes' ``ritz_values`` and
    ``weights`` (`spectral_quadrature_of`) and ``png``; with ``layers``, ``layers``: per module
    ``lambda_max``, ``trace``, ``trace_stderr`` and ``size`` (`layer_sharpness_of`, the trace
    from the probes of ``hessian_trace``), and ``layer_steps``.
  """
  for key, value, low in (("--k", k, 1), ("--batches", batches, 1),
                          ("--trace_samples", trace_samples, 1),
                          ("--max_iterations", max_iterations, 1), ("--num_probes", num_probes, 1),
                          ("--num_steps", num_steps, 1), ("--num_points", num_points, 2),
                          ("--layer_steps", layer_steps, 1)):
    if value < low:
      raise ConfigError(key, f"must be >= {low}, got {value}")
  if not epsilon > 0:
    raise ConfigError("--epsilon", f"must be > 0, got {epsilon}")
  if sigma is not None and not sigma > 0:
    raise ConfigError("--sigma", f"must be > 0, got {sigma}")
  devices = jax.local_devices() if devices is None else list(devices)
  solution = runs.restore(workdir)
  data = train_batches(solution, batches, batch_size, devices)
  obj = data_parallel_objective(train_loss(solution), solution.params, data, devices)
  seconds = {}

  t = time.perf_counter()
  eigenvalues = eigenvalues_of(obj, k, seed)
  seconds["top_eigenvalues"] = time.perf_counter() - t
  t = time.perf_counter()
  blocks = modules(solution.params)
  if layers:  # the same probes give every module's trace and, summed, the whole trace
    block_samples = block_trace_samples_of(obj, blocks, trace_samples, seed)
    samples = block_samples.sum(axis=1)
  else:
    samples = trace_samples_of(obj, trace_samples, seed)
  seconds["hessian_trace"] = time.perf_counter() - t
  t = time.perf_counter()
  eps = epsilon_sharpness_of(obj, epsilon, seed, max_iterations)
  seconds["epsilon_sharpness"] = time.perf_counter() - t

  result = {
      "workdir": os.path.abspath(workdir), "model": solution.model, "step": solution.step,
      "batches": batches, "batch_size": int(data[0]["label"].size), "devices": len(devices),
      "train_loss": eps["loss"], "top_eigenvalues": eigenvalues.tolist(),
      "hessian_trace": float(np.mean(samples)),
      "hessian_trace_stderr": _stderr(samples),
      "trace_samples": trace_samples, "epsilon": epsilon,
      "epsilon_sharpness": eps["sharpness"], "epsilon_max_loss": eps["max_loss"],
      "epsilon_iterations": eps["iterations"], "seed": seed,
      "batchnorm": "evaluation mode (the model's running statistics)",
      "seconds": seconds,
  }
  if density:
    t = time.perf_counter()
    quad = spectral_quadrature_of(obj, num_probes, num_steps, seed)
    try:
      grid, values, width = density_of(quad, sigma, num_points)
    except ValueError as e:
      raise ConfigError("--sigma" if sigma is not None else "--num_points", str(e)) from None
    seconds["spectral_density"] = time.perf_counter() - t
    png = os.path.join(os.path.abspath(workdir), DENSITY_FILE)
    plot_density(grid, values, png, sigma=width, top_eigenvalues=eigenvalues,
                 title=f"{os.path.basename(os.path.normpath(workdir))}: {solution.model}")
    result["density"] = {
        "grid": grid.tolist(), "density": values.tolist(), "sigma": width,
        "num_probes": num_probes, "num_steps": num_steps,
        "ritz_values": [x.tolist() for x in quad.nodes],
        "weights": [w.tolist() for w in quad.weights], "png": png}
  if layers:
    t = time.perf_counter()
    lambda_max = block_top_eigenvalues_of(obj, blocks, seed, layer_steps)
    seconds["layer_sharpness"] = time.perf_counter() - t
    result.update(layers=_per_block(blocks, lambda_max, block_samples), layer_steps=layer_steps)
  with open(os.path.join(workdir, SHARPNESS_FILE + ".tmp"), "w") as f:
    json.dump(result, f, indent=1)
  os.replace(os.path.join(workdir, SHARPNESS_FILE + ".tmp"), os.path.join(workdir, SHARPNESS_FILE))
  return result


def _stderr(samples: np.ndarray) -> float:
  """Sample standard deviation / √m (NaN for one sample)."""
  if len(samples) < 2:
    return float("nan")
  return float(np.std(samples, ddof=1) / np.sqrt(len(samples)))


def plot_density(grid: np.ndarray, density: np.ndarray, path: str, *, sigma: float,
                 top_eigenvalues: Sequence[float] = (), title: str = "") -> None:
  """The spectral density on a log scale (its bulk and outliers differ by decades), with the
  top eigenvalues (ARPACK) marked."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7.0, 4.3))
  ax.semilogy(grid, density, color="C0", lw=1.2, label=f"SLQ density (Gaussian σ = {sigma:.3g})")
  floor = max(density.max() * 1e-8, np.finfo(float).tiny)
  ax.set_ylim(floor, density.max() * 3)
  for i, value in enumerate(top_eigenvalues):
    ax.axvline(value, color="C3", ls="--", lw=0.8,
               label="top eigenvalues (Lanczos, ARPACK)" if i == 0 else None)
  ax.set_xlabel("Hessian eigenvalue λ")
  ax.set_ylabel("spectral density")
  ax.legend(fontsize=8, loc="best")
  if title:
    ax.set_title(title, fontsize=9, wrap=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def table(result: dict[str, Any]) -> str:
  """The printed table of a `measure` result (and with ``layers`` the per-module table)."""
  s = result["seconds"]
  rows = [("training loss", f"{result['train_loss']:.6g}", "")]
  for i, value in enumerate(result["top_eigenvalues"]):
    rows.append((f"Hessian eigenvalue λ{i + 1}", f"{value:.6g}",
                 f"{s['top_eigenvalues']:.1f}" if i == 0 else ""))
  rows.append(("Hessian trace (Hutchinson)",
               f"{result['hessian_trace']:.6g} ± {result['hessian_trace_stderr']:.2g}",
               f"{s['hessian_trace']:.1f}"))
  rows.append((f"ε-sharpness, ε = {result['epsilon']:g} (%)",
               f"{result['epsilon_sharpness']:.6g}", f"{s['epsilon_sharpness']:.1f}"))
  if "density" in result:
    d = result["density"]
    ritz = np.concatenate([np.asarray(x) for x in d["ritz_values"]])
    rows.append((f"spectral density (SLQ, {d['num_probes']} probes × {d['num_steps']} steps)",
                 f"[{ritz.min():.3g}, {ritz.max():.3g}]", f"{s['spectral_density']:.1f}"))
  width = max(len(r[0]) for r in rows)
  head = (f"{result['workdir']}: {result['model']}; training loss over {result['batches']} "
          f"batches of {result['batch_size']}, BatchNorm in evaluation mode, "
          f"{result['devices']} device(s); trace ± standard error over "
          f"{result['trace_samples']} probes")
  lines = [head, f"{'quantity':<{width}}  {'value':>22}  {'seconds':>7}"]
  lines += [f"{name:<{width}}  {value:>22}  {sec:>7}" for name, value, sec in rows]
  if "density" in result:
    lines.append(f"density: Ritz values in the range above, Gaussian σ = "
                 f"{result['density']['sigma']:.3g}; {result['density']['png']}")
  if "layers" in result:
    layers = result["layers"]
    name_width = max(len("module"), *(len(n) for n in layers))
    caption = (f"per module: the Hessian's diagonal block of its parameters; λ_max by Lanczos "
               f"(≤ {result['layer_steps']} steps), trace ± standard error by Hutchinson (the "
               f"{result['trace_samples']} probes above) ({s['layer_sharpness']:.1f} s)")
    header = (f"{'module':<{name_width}}  {'params':>9}  {'λ_max':>12}  {'trace':>12}  "
              f"{'± stderr':>9}")
    lines += ["", caption, header]
    lines += [f"{name:<{name_width}}  {d['size']:>9}  {d['lambda_max']:>12.5g}  "
              f"{d['trace']:>12.5g}  {d['trace_stderr']:>9.2g}" for name, d in layers.items()]
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so importing is free)."""
  flags.DEFINE_string("workdir", None, "A finished run (config.json and checkpoints).")
  flags.DEFINE_integer("k", 3, "How many of the largest Hessian eigenvalues.")
  flags.DEFINE_integer("batches", 10, "Training loss over this many training batches.")
  flags.DEFINE_integer("batch_size", None, "Examples per batch (default: the run's batch_size).")
  flags.DEFINE_integer("trace_samples", 100, "Rademacher probes of the Hutchinson trace.")
  flags.DEFINE_float("epsilon", 1e-3, "ε of Keskar's ε-sharpness (box ε(|θ|+1)).")
  flags.DEFINE_integer("max_iterations", KESKAR_ITERATIONS, "L-BFGS-B iterations of ε-sharpness.")
  flags.DEFINE_integer("seed", 0, "Seeds the Lanczos start, the probes and the ascent's start.")
  flags.DEFINE_bool("density", False, "Also the spectral density by stochastic Lanczos "
                    "quadrature: WORKDIR/density.png and the arrays in sharpness.json.")
  flags.DEFINE_integer("num_probes", 10, "--density: Rademacher probes.")
  flags.DEFINE_integer("num_steps", 64, "--density: Lanczos steps per probe.")
  flags.DEFINE_float("sigma", None, "--density: Gaussian width (default 1% of the Ritz range).")
  flags.DEFINE_integer("num_points", 1024, "--density: points of the grid.")
  flags.DEFINE_bool("layers", False, "Also λ_max and trace of each module's diagonal Hessian "
                    "block (a table; sharpness.json's layers).")
  flags.DEFINE_integer("layer_steps", LAYER_LANCZOS_STEPS, "--layers: Lanczos steps per module.")
  flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  try:
    result = measure(FLAGS.workdir, k=FLAGS.k, batches=FLAGS.batches,
                     trace_samples=FLAGS.trace_samples, epsilon=FLAGS.epsilon, seed=FLAGS.seed,
                     batch_size=FLAGS.batch_size, max_iterations=FLAGS.max_iterations,
                     density=FLAGS.density, num_probes=FLAGS.num_probes,
                     num_steps=FLAGS.num_steps, sigma=FLAGS.sigma, num_points=FLAGS.num_points,
                     layers=FLAGS.layers, layer_steps=FLAGS.layer_steps)
  except ConfigError as e:
    sys.exit(f"lbjax: error: {e}")
  print(table(result), flush=True)
  if "density" in result:
    print(f"wrote {result['density']['png']}", flush=True)
  print(f"wrote {os.path.join(FLAGS.workdir, SHARPNESS_FILE)}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
