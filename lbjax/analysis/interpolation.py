r"""The loss landscape along lines in weight space: seed 001 Fig. 3 and Li et al. (2018).

**Linear interpolation** between two solutions (Goodfellow, Vinyals & Saxe 2015; Keskar et al.
2017; seed 001 Fig. 3, "学習で得られた解の 1 次元線形補間図"):

.. math::
  \theta(\alpha) = (1 - \alpha)\,\theta_a + \alpha\,\theta_b, \qquad \alpha \in [-1, 2],

so :math:`\alpha = 0` is solution a, :math:`\alpha = 1` is solution b, and the ends extrapolate.

**Filter-normalised random direction** around one solution (Li, Xu, Taylor, Studer & Goldstein,
"Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018, §4):

.. math::
  \theta(t) = \theta + t\,d, \qquad
  d_{l,j} \leftarrow \frac{d_{l,j}}{\lVert d_{l,j} \rVert}\,\lVert \theta_{l,j} \rVert,

with :math:`d \sim \mathcal{N}(0, I)` and :math:`j` running over the filters of layer :math:`l`
(an output channel of a convolution, an output unit of a dense layer: the last axis of the
kernel). Scaling each filter of :math:`d` to the norm of the filter it moves removes the scale
invariance that ReLU networks with BatchNorm have, so curves of different solutions are
comparable and a wider curve means a flatter minimum. One-dimensional tensors (biases,
BatchNorm scale and offset) get :math:`d = 0`, as Li et al. do.

At every point the BatchNorm running statistics are **recomputed** for :math:`\theta(\alpha)` by
one pass over the training data (`lbjax.evaluation.recompute_on_train_data`): interpolating the
statistics of the two ends would describe neither network. Then the loss and accuracy are
evaluated on the training and test sets (no augmentation, as in evaluation).
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from lbjax import evaluation
from lbjax import mesh as mesh_lib
from lbjax import step as step_lib
from lbjax.analysis import runs

METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def _combine(ca: float, tree_a, cb: float, tree_b):
  """``ca·a + cb·b`` leaf by leaf, computed in float64 and returned in ``a``'s dtypes."""
  return jax.tree.map(
      lambda a, b: (ca * np.asarray(a, np.float64) + cb * np.asarray(b, np.float64)).astype(
          np.asarray(a).dtype), tree_a, tree_b)


def interpolate(params_a, params_b, alpha: float):
  r""":math:`(1 - \alpha)\,\theta_a + \alpha\,\theta_b` leaf by leaf (in each leaf's dtype)."""
  return _combine(1.0 - alpha, params_a, alpha, params_b)


def add_direction(params, direction, t: float):
  r""":math:`\theta + t\,d` leaf by leaf."""
  return _combine(1.0, params, t, direction)


def filter_normalize(direction, params):
  r"""Li et al. (2018) §4: each filter of ``direction`` rescaled to the norm of ``params``' filter.

  A filter is a slice along the last axis of a tensor with two or more dimensions (flax kernels
  are ``[..., in, out]``); one-dimensional tensors become 0.
  """

  def normalize(d, p):
    dtype = np.asarray(p).dtype
    d, p = np.asarray(d, np.float64), np.asarray(p, np.float64)
    if p.ndim <= 1:
      return np.zeros(p.shape, dtype)
    axes = tuple(range(p.ndim - 1))
    d_norm = np.sqrt(np.sum(d * d, axis=axes, keepdims=True))
    p_norm = np.sqrt(np.sum(p * p, axis=axes, keepdims=True))
    return (d * p_norm / np.where(d_norm > 0, d_norm, 1.0)).astype(dtype)

  return jax.tree.map(normalize, direction, params)


def random_direction(params, seed: int = 0):
  """A filter-normalised Gaussian direction around ``params`` (host arrays), from ``seed``."""
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  gaussian = [rng.standard_normal(np.shape(leaf)) for leaf in leaves]
  return filter_normalize(jax.tree.unflatten(treedef, gaussian), params)


class Evaluator:
  """Loss and accuracy of weights on the training and test sets, BatchNorm recomputed.

  Args:
    exp: the `lbjax.step.Experiment` of the model (its data, eval step and batch size).
    recompute_batch_stats: recompute BatchNorm statistics for each weight vector (default);
      False evaluates with the statistics given to `__call__`.
    max_train_examples: evaluate the training loss on the first this many training examples
      (None: all). The BatchNorm pass always reads the whole training set.

  Runs on this process's devices (``jax.local_devices()``) through `lbjax.evaluation`
  (`lbjax.evaluation.evaluate`, `lbjax.analysis.runs.recompute_batch_stats`).
  """

  def __init__(self, exp: step_lib.Experiment, *, recompute_batch_stats: bool = True,
               max_train_examples: int | None = None):
    self.exp = exp
    self.recompute = recompute_batch_stats
    self.devices = jax.local_devices()
    train_split = exp.data.train
    if max_train_examples is not None:
      train_split = {k: v[:max_train_examples] for k, v in train_split.items()}
    self.splits = {"train": train_split, "test": exp.data.test}
    self.mesh = mesh_lib.data_mesh(self.devices)
    self._eval_program = exp.eval_program(self.mesh)
    # The eval batch must split over the devices; round it down to a multiple of their count.
    n = len(self.devices)
    self.batch_size = max(n, exp.config.eval_batch_size // n * n)

  def batch_stats(self, params, batch_stats):
    """The statistics used for ``params``: recomputed (host arrays), or ``batch_stats``."""
    if not self.recompute:
      return batch_stats
    return runs.recompute_batch_stats(self.exp, params, batch_stats, self.devices)

  def __call__(self, params, batch_stats) -> dict[str, float]:
    """``{train,test}_{loss,accuracy}`` of ``params`` (host arrays)."""
    stats = self.batch_stats(params, batch_stats)
    params_r = mesh_lib.put_replicated(params, self.mesh)
    stats_r = mesh_lib.put_replicated(stats, self.mesh)
    results = {}
    for name, split in self.splits.items():
      r = evaluation.evaluate(self._eval_program, params_r, stats_r, split,
                              batch_size=self.batch_size, mesh=self.mesh)
      results.update({f"{name}_loss": r["loss"], f"{name}_accuracy": r["accuracy"]})
    return results


def _curve(evaluate: Callable[[Any, Any], dict], points: Sequence[float], weights_at: Callable,
           stats_at: Callable, key: str, log: Callable[[str], None] | None) -> dict:
  curve: dict[str, list] = {key: [], **{m: [] for m in METRICS}}
  for x in points:
    r = evaluate(weights_at(x), stats_at(x))
    curve[key].append(float(x))
    for m in METRICS:
      curve[m].append(r[m])
    if log is not None:
      log(f"{key}={x:+.3f}  " + "  ".join(f"{m}={r[m]:.4f}" for m in METRICS))
  return {k: np.asarray(v) for k, v in curve.items()}


def alphas(alpha_min: float = -1.0, alpha_max: float = 2.0, num_points: int = 13) -> np.ndarray:
  """``num_points`` evenly spaced values of α, plus 0 and 1 (the two solutions) if in range."""
  grid = np.linspace(alpha_min, alpha_max, num_points)
  ends = [a for a in (0.0, 1.0) if alpha_min <= a <= alpha_max]
  return np.union1d(np.round(grid, 12), ends)


def linear_curve(evaluator: Evaluator, a, b, points: Sequence[float],
                 log: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
  """Seed 001 Fig. 3: the metrics at θ(α) = (1−α)θ_a + αθ_b for α in ``points``.

  Args:
    evaluator: an `Evaluator` of the model.
    a, b: the two solutions, each with ``params`` and ``batch_stats`` (e.g. `runs.Solution`).
    points: the values of α.
    log: called with one line per point.

  Returns:
    ``{"alpha": [P], "train_loss": [P], "train_accuracy": [P], "test_loss": [P],
    "test_accuracy": [P]}``. Without BatchNorm recompute the statistics are interpolated too.
  """
  return _curve(evaluator, points, lambda x: interpolate(a.params, b.params, x),
                lambda x: interpolate(a.batch_stats, b.batch_stats, x), "alpha", log)


def direction_curve(evaluator: Evaluator, solution, direction, points: Sequence[float],
                    log: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
  """Li et al. (2018): the metrics at θ + t·d for t in ``points`` (key ``"t"``)."""
  return _curve(evaluator, points, lambda t: add_direction(solution.params, direction, t),
                lambda t: solution.batch_stats, "t", log)


def sharpness(curve: dict[str, np.ndarray], radius: float, key: str = "t",
              metric: str = "train_loss") -> float:
  """The largest rise of ``metric`` over its value at 0 within ``|key| <= radius`` (Keskar et al.
  2017's sharpness, measured along the curve): larger means a sharper minimum."""
  x, y = np.asarray(curve[key]), np.asarray(curve[metric])
  inside = np.abs(x) <= radius + 1e-12
  centre = y[np.argmin(np.abs(x))]
  return float(np.max(y[inside]) - centre)


def plot(curves: Sequence[dict[str, np.ndarray]], titles: Sequence[str], path: str, *,
         key: str = "alpha", xlabel: str = r"$\alpha$", suptitle: str = "") -> None:
  """Seed 001 Fig. 3: loss (blue, left axis) and accuracy (red, right axis), train solid and test
  dashed, one panel per curve, shared y-axes so that sharpness compares across panels."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.3), squeeze=False)
  loss_max = max(float(np.nanmax(np.minimum(np.concatenate([c["train_loss"], c["test_loss"]]),
                                            1e3))) for c in curves)
  for ax, curve, title in zip(axes[0], curves, titles):
    x = curve[key]
    ax.plot(x, curve["train_loss"], "b-", label="train loss")
    ax.plot(x, curve["test_loss"], "b--", label="test loss")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss", color="b")
    ax.set_ylim(0, loss_max * 1.05)
    ax.tick_params(axis="y", colors="b")
    acc = ax.twinx()
    acc.plot(x, 100 * curve["train_accuracy"], "r-", label="train accuracy")
    acc.plot(x, 100 * curve["test_accuracy"], "r--", label="test accuracy")
    acc.set_ylabel("accuracy (%)", color="r")
    acc.set_ylim(0, 100)
    acc.tick_params(axis="y", colors="r")
    for marker in ((0.0, 1.0) if key == "alpha" else (0.0,)):
      ax.axvline(marker, color="0.8", lw=0.8, zorder=0)
    ax.set_title(title, fontsize=9)
  lines = axes[0, 0].get_lines()[:2] + fig.axes[-1].get_lines()
  fig.legend(lines, [l.get_label() for l in lines], fontsize=8, loc="lower center", ncol=4)
  if suptitle:
    fig.suptitle(suptitle, fontsize=10)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)
