r"""The Lanczos iteration with full reorthogonalisation, and its Gauss quadrature.

For a symmetric operator :math:`A` and a unit start vector :math:`q_1`, :math:`m` steps of Lanczos
build an orthonormal basis :math:`Q_m` of the Krylov space
:math:`\operatorname{span}\{q_1, A q_1, \dots, A^{m-1} q_1\}` in which :math:`A` is the
tridiagonal :math:`T_m = Q_m^\top A Q_m` (diagonal :math:`\alpha`, off-diagonal :math:`\beta`;
Golub & Van Loan, *Matrix Computations*, §10.1). The eigenvalues :math:`\theta_k` of :math:`T_m`
(Ritz values) approach the extreme eigenvalues of :math:`A` first, and with the squared first
components :math:`\tau_k = (e_1^\top u_k)^2` of its eigenvectors they are the :math:`m`-point
Gauss quadrature of the spectral measure of :math:`q_1`:

.. math::
  q_1^\top f(A)\, q_1 = \sum_i (q_1^\top v_i)^2 f(\lambda_i) \approx \sum_{k=1}^m \tau_k
  f(\theta_k),

exact for polynomials :math:`f` of degree :math:`\le 2m - 1` (Golub & Meurant 1994). This is the
core of stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019;
PyHessian, Yao et al. 2020).

Every new vector is orthogonalised against the whole basis, twice ("twice is enough", Parlett),
so the float32 products of a Hessian do not make Ritz values repeat. `run` advances several
independent problems in lockstep, so that one call of the operator (a ``vmap`` of
Hessian-vector products) serves all of them.
"""

from collections.abc import Callable, Sequence

import numpy as np
import scipy.linalg

# β below this fraction of the largest |α|, β seen ends a run: its Krylov space is invariant (to
# the precision of float32 products), and the quadrature already holds all of the start vector.
BREAKDOWN = 1e-6


def run(apply: Callable[[list[int], list[np.ndarray]], list[np.ndarray]],
        starts: Sequence[np.ndarray], num_steps: int | Sequence[int]
        ) -> list[tuple[np.ndarray, np.ndarray]]:
  r"""Lanczos on several problems at once: the tridiagonal :math:`T_m` of each start vector.

  Args:
    apply: ``apply(problems, vectors) -> products``: problem ``problems[j]``'s operator applied
      to ``vectors[j]`` (float64), for the problems still running (indices into ``starts``, in
      order); one call per step.
    starts: one start vector per problem (any nonzero norm; normalised here). Problems may have
      different dimensions.
    num_steps: steps per problem (one value for all, or one each); each is capped at its
      problem's dimension, the most a Krylov space can have.

  Returns:
    Per problem, ``(alpha [m], beta [m - 1])`` of :math:`T_m` (``m`` below the steps asked when
    the Krylov space became invariant).
  """
  count = len(starts)
  steps = [num_steps] * count if np.ndim(num_steps) == 0 else list(num_steps)
  basis = [[np.asarray(s, np.float64) / np.linalg.norm(s)] for s in starts]
  alphas: list[list[float]] = [[] for _ in starts]
  betas: list[list[float]] = [[] for _ in starts]
  scale = [0.0] * count
  active = [i for i in range(count) if min(steps[i], starts[i].size) > 0]
  while active:
    products = apply(active, [basis[i][-1] for i in active])
    still = []
    for i, w in zip(active, products):
      w = np.asarray(w, np.float64)
      alpha = float(basis[i][-1] @ w)
      alphas[i].append(alpha)
      scale[i] = max(scale[i], abs(alpha))
      if len(alphas[i]) >= min(steps[i], starts[i].size):
        continue
      q = np.stack(basis[i])
      for _ in range(2):  # full reorthogonalisation, twice
        w = w - q.T @ (q @ w)
      beta = float(np.linalg.norm(w))
      if beta <= BREAKDOWN * max(scale[i], beta):
        continue
      scale[i] = max(scale[i], beta)
      betas[i].append(beta)
      basis[i].append(w / beta)
      still.append(i)
    active = still
  return [(np.asarray(a), np.asarray(b)) for a, b in zip(alphas, betas)]


def quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  r"""Gauss quadrature of a Lanczos run: Ritz values :math:`\theta` (ascending) and weights
  :math:`\tau` (summing to 1)."""
  if len(alpha) == 1:
    return np.asarray(alpha, np.float64), np.ones(1)
  theta, vectors = scipy.linalg.eigh_tridiagonal(alpha, beta)
  return theta, vectors[0] ** 2
