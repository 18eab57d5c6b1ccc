r"""Hessian sharpness of a trained model: top eigenvalues, trace, and Keskar's ε-sharpness.

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

The Hessian-vector product is forward-over-reverse, :math:`Hv = \partial_t \nabla f(\theta + tv)
|_{t=0}` (``jax.jvp`` of ``jax.grad``): one forward and one backward pass with tangents, about
the cost of two gradients, never the :math:`n \times n` matrix. Each function takes any scalar
``loss_fn(params)`` over a parameter pytree; the flat vector is ``jax.flatten_util.ravel_pytree``'s.

The command restores a finished run and measures its training loss::

    python -m lbjax.analysis.sharpness --workdir=RUN [--k=3] [--batches=N]

The loss is the mean cross-entropy over the first ``N`` training batches of the run's stream
(``config.batch_size`` each, unaugmented: evaluation preprocessing) with **BatchNorm in evaluation
mode** (``train=False``: the checkpoint's running statistics, not the batch's), so the loss is one
fixed deterministic function of the weights whose Hessian is well defined. The batches are split
over the local devices: every Hessian-vector product, loss and gradient is a ``jax.pmap`` over
them with ``lax.pmean`` of the per-device result, summed over the batches on the host in float64.
The numbers go to ``RUN/sharpness.json`` and a table to stdout.
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
import numpy as np
import optax
import scipy.optimize
import scipy.sparse.linalg

from lbjax import step as step_lib  # AXIS (the model's named device axis), replicate, build
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


def trace_samples_of(obj: Objective, num_samples: int = 100, seed: int = 0,
                     probes_per_call: int = 10) -> np.ndarray:
  r"""The ``num_samples`` Hutchinson samples :math:`z_j^\top H z_j`, Rademacher :math:`z_j`.

  Each sample is unbiased for :math:`\operatorname{tr} H`, with variance
  :math:`2 \sum_{i \ne l} H_{il}^2`. The probes are drawn from
  ``numpy.random.default_rng(seed)`` and multiplied ``probes_per_call`` at a time (``vmap``).
  """
  rng = np.random.default_rng(seed)
  n = obj.x0.size
  samples = []
  for start in range(0, num_samples, probes_per_call):
    z = rng.integers(0, 2, size=(probes_per_call, n)).astype(np.float64) * 2.0 - 1.0
    samples.append(np.sum(z * obj.hvp(z), axis=1))  # a fixed stack shape: compiled once
  return np.concatenate(samples)[:num_samples]


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
# A restored run's training loss, data-parallel.


def data_parallel_objective(batch_loss: Callable[[Any, Any], jnp.ndarray], params,
                            batches: Sequence[Any],
                            devices: Sequence[jax.Device] | None = None) -> Objective:
  """`Objective` of the mean of ``batch_loss(params, batch)`` over ``batches``, over devices.

  Args:
    batch_loss: per-device mean loss over one device batch (leaves ``[b, ...]``).
    params: the parameter pytree (host or device arrays).
    batches: global batches with leaves ``[D, b, ...]`` (D = number of ``devices``), all of
      the same size, so the mean over them is the mean over every example.
    devices: default ``jax.local_devices()``.

  Every quantity is a ``jax.pmap`` over ``devices`` whose per-device value (loss, gradient or
  Hessian-vector product of the device's shard) is averaged with ``lax.pmean`` over
  ``step_lib.AXIS``; the host sums the batches in float64 and divides by their number.
  """
  devices = jax.local_devices() if devices is None else list(devices)
  flat, unravel = ravel_pytree(params)
  dtype = flat.dtype
  axis = step_lib.AXIS

  def value_and_grad(x, batch):
    value, grad = jax.value_and_grad(batch_loss)(unravel(x), batch)
    return lax.pmean((value, ravel_pytree(grad)[0]), axis)

  def hvp_stack(x, vs, batch):
    p = unravel(x)
    f = lambda q: batch_loss(q, batch)
    return lax.pmean(jax.vmap(lambda v: ravel_pytree(_hvp(f, p, unravel(v)))[0])(vs), axis)

  p_value_and_grad = jax.pmap(value_and_grad, axis_name=axis, devices=devices)
  p_hvp = jax.pmap(hvp_stack, axis_name=axis, devices=devices)
  batches = [jax.tree.map(np.asarray, b) for b in batches]
  replicate = lambda a: step_lib.replicate(np.asarray(a, dtype), devices)
  x0_rep = replicate(flat)

  @_full_precision
  def host_value_and_grad(x):
    x_rep = replicate(x)
    value, grad = 0.0, np.zeros(flat.size)
    for batch in batches:
      v, g = p_value_and_grad(x_rep, batch)
      value += float(v[0])
      grad += np.asarray(g[0], np.float64)
    return value / len(batches), grad / len(batches)

  def host_hvp(vs):
    vs_rep = replicate(vs)
    total = np.zeros(vs.shape)
    for batch in batches:
      total += np.asarray(p_hvp(x0_rep, vs_rep, batch)[0], np.float64)
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


def measure(workdir: str, *, k: int = 3, batches: int = 10, trace_samples: int = 100,
            epsilon: float = 1e-3, seed: int = 0, batch_size: int | None = None,
            max_iterations: int = KESKAR_ITERATIONS,
            devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
  """The command as a function: measures ``workdir``'s model, writes ``sharpness.json``.

  Returns:
    What it writes: ``workdir``, ``step`` (the checkpoint), ``batches``, ``batch_size``,
    ``devices``, ``train_loss``, ``top_eigenvalues`` [k], ``hessian_trace`` with
    ``hessian_trace_stderr`` (sample standard deviation / √m) and ``trace_samples``,
    ``epsilon``, ``epsilon_sharpness`` (percent) with ``epsilon_max_loss`` and
    ``epsilon_iterations``, ``seed``, ``batchnorm`` and ``seconds`` per quantity.
  """
  for key, value, low in (("--k", k, 1), ("--batches", batches, 1),
                          ("--trace_samples", trace_samples, 1),
                          ("--max_iterations", max_iterations, 1)):
    if value < low:
      raise ConfigError(key, f"must be >= {low}, got {value}")
  if not epsilon > 0:
    raise ConfigError("--epsilon", f"must be > 0, got {epsilon}")
  devices = jax.local_devices() if devices is None else list(devices)
  solution = runs.restore(workdir)
  data = train_batches(solution, batches, batch_size, devices)
  obj = data_parallel_objective(train_loss(solution), solution.params, data, devices)
  seconds = {}

  t = time.perf_counter()
  eigenvalues = eigenvalues_of(obj, k, seed)
  seconds["top_eigenvalues"] = time.perf_counter() - t
  t = time.perf_counter()
  samples = trace_samples_of(obj, trace_samples, seed)
  seconds["hessian_trace"] = time.perf_counter() - t
  t = time.perf_counter()
  eps = epsilon_sharpness_of(obj, epsilon, seed, max_iterations)
  seconds["epsilon_sharpness"] = time.perf_counter() - t

  result = {
      "workdir": os.path.abspath(workdir), "step": solution.step, "batches": batches,
      "batch_size": int(data[0]["label"].size), "devices": len(devices),
      "train_loss": eps["loss"], "top_eigenvalues": eigenvalues.tolist(),
      "hessian_trace": float(np.mean(samples)),
      "hessian_trace_stderr": float(np.std(samples, ddof=1) / np.sqrt(len(samples)))
                              if len(samples) > 1 else float("nan"),
      "trace_samples": trace_samples, "epsilon": epsilon,
      "epsilon_sharpness": eps["sharpness"], "epsilon_max_loss": eps["max_loss"],
      "epsilon_iterations": eps["iterations"], "seed": seed,
      "batchnorm": "evaluation mode (running statistics of the checkpoint)",
      "seconds": seconds,
  }
  with open(os.path.join(workdir, SHARPNESS_FILE + ".tmp"), "w") as f:
    json.dump(result, f, indent=1)
  os.replace(os.path.join(workdir, SHARPNESS_FILE + ".tmp"), os.path.join(workdir, SHARPNESS_FILE))
  return result


def table(result: dict[str, Any]) -> str:
  """The printed table of a `measure` result."""
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
  width = max(len(r[0]) for r in rows)
  head = (f"{result['workdir']} (step {result['step']}): training loss over {result['batches']} "
          f"batches of {result['batch_size']}, BatchNorm in evaluation mode, "
          f"{result['devices']} device(s); trace ± standard error over "
          f"{result['trace_samples']} probes")
  lines = [head, f"{'quantity':<{width}}  {'value':>22}  {'seconds':>7}"]
  lines += [f"{name:<{width}}  {value:>22}  {sec:>7}" for name, value, sec in rows]
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
  flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  try:
    result = measure(FLAGS.workdir, k=FLAGS.k, batches=FLAGS.batches,
                     trace_samples=FLAGS.trace_samples, epsilon=FLAGS.epsilon, seed=FLAGS.seed,
                     batch_size=FLAGS.batch_size, max_iterations=FLAGS.max_iterations)
  except ConfigError as e:
    sys.exit(f"lbjax: error: {e}")
  print(table(result), flush=True)
  print(f"wrote {os.path.join(FLAGS.workdir, SHARPNESS_FILE)}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
