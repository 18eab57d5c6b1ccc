r"""The gradient noise scale B_simple from two batch sizes (McCandlish et al. 2018, App. A.1).

McCandlish, Kaplan, Amodei & the OpenAI Dota Team, "An Empirical Model of Large-Batch Training"
(arXiv:1812.06162), §2.2 and App. A.1. With :math:`G` the true gradient, :math:`\Sigma` the
per-example gradient covariance and :math:`G_B` the mean gradient of a batch of :math:`B` i.i.d.
examples, :math:`\mathbb{E}|G_B|^2 = |G|^2 + \operatorname{tr}(\Sigma)/B`. Two batch sizes
:math:`B_\text{small} < B_\text{big}` give the unbiased estimators (App. A.1, eq. (A.2)–(A.3))

.. math::
  |\mathcal{G}|^2 = \frac{B_\text{big}|G_{B_\text{big}}|^2 - B_\text{small}|G_{B_\text{small}}|^2}
                         {B_\text{big} - B_\text{small}}, \qquad
  \mathcal{S} = \frac{|G_{B_\text{small}}|^2 - |G_{B_\text{big}}|^2}
                     {1/B_\text{small} - 1/B_\text{big}},

and the simple noise scale :math:`B_\text{simple} = \operatorname{tr}(\Sigma)/|G|^2 \approx
\mathcal{S}/|\mathcal{G}|^2`, which predicts the critical batch size beyond which a larger batch
stops saving optimizer steps (their eq. (2.8)–(2.11)). The ratio of two noisy estimates is biased
and often negative for one step, so, as McCandlish et al. do, :math:`|\mathcal{G}|^2` and
:math:`\mathcal{S}` are each averaged with an exponential moving average and B_simple is the
ratio of the averages (`NoiseScaleEMA`).

In data-parallel training both batch sizes come for free (`batch_sizes`): :math:`B_\text{small}`
is the per-device batch (the micro-batch under accumulation), :math:`|G_{B_\text{small}}|^2` the
mean over devices (and micro-batches) of the squared norm of each one's own mean gradient, and
:math:`B_\text{big}` the global batch, :math:`|G_{B_\text{big}}|^2` the squared norm of the
averaged gradient the optimizer applies. On one device without micro-batches the device batch is
split into two halves.
"""

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


def simple_noise_scale(sq_small, sq_big, b_small, b_big):
  r"""McCandlish et al. (2018) App. A.1: ``(g_sq, trace_sigma, b_simple)`` from two batch sizes.

  Args:
    sq_small: :math:`|G_{B_\text{small}}|^2`, the squared norm of a mean gradient over
      ``b_small`` examples (or the mean of several such squared norms). A float or array (NumPy
      or JAX, also inside ``jit``); arrays are computed elementwise.
    sq_big: :math:`|G_{B_\text{big}}|^2` over ``b_big`` examples, from the same step.
    b_small: the small batch size (a concrete number).
    b_big: the big batch size, ``> b_small``.

  Returns:
    ``g_sq`` (:math:`|\mathcal{G}|^2`, unbiased for :math:`|G|^2`), ``trace_sigma``
    (:math:`\mathcal{S}`, unbiased for :math:`\operatorname{tr}\Sigma`) and
    ``b_simple = trace_sigma / g_sq`` of this one estimate (noisy: average the first two over
    steps, `NoiseScaleEMA`, before taking the ratio).

  Raises:
    ValueError: unless ``0 < b_small < b_big``.
  """
  g_sq, trace_sigma = unbiased_estimates(sq_small, sq_big, b_small, b_big)
  return g_sq, trace_sigma, trace_sigma / g_sq


def unbiased_estimates(sq_small, sq_big, b_small, b_big):
  r"""``(g_sq, trace_sigma)`` of `simple_noise_scale` (App. A.1, eq. (A.2)–(A.3)) without
  their ratio (which a zero ``g_sq`` would make undefined)."""
  b_small, b_big = float(b_small), float(b_big)
  if not 0 < b_small < b_big:
    raise ValueError(f"need 0 < b_small < b_big, got b_small={b_small:g}, b_big={b_big:g}")
  g_sq = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
  trace_sigma = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
  return g_sq, trace_sigma


def batch_sizes(global_batch: int, device_count: int, micro_batch_size: int | None = None
                ) -> tuple[int, int, int]:
  """``(b_small, b_big, splits)``: the two batch sizes of the training-time estimate.

  ``b_big`` is the global batch; ``b_small`` the micro-batch under accumulation, else the
  per-device batch, else (one device, no micro-batches) half of it; ``splits`` is how many
  pieces of ``b_small`` each device's batch is cut into (its micro-batches, or 2 for the halves),
  each piece's own mean gradient feeding :math:`|G_{B_\\text{small}}|^2`.

  Raises:
    ValueError: the batch does not split so (the per-device batch not divisible by the micro
      batch, or one device with an odd batch or a batch of 1).
  """
  per_device, rest = divmod(global_batch, device_count)
  if rest or per_device < 1:
    raise ValueError(f"global batch {global_batch} does not split over {device_count} devices")
  if micro_batch_size and micro_batch_size < per_device:
    if per_device % micro_batch_size:
      raise ValueError(f"per-device batch {per_device} is not a multiple of the micro-batch "
                       f"{micro_batch_size}")
    return micro_batch_size, global_batch, per_device // micro_batch_size
  if device_count > 1:
    return per_device, global_batch, 1
  if per_device % 2 or per_device < 2:
    raise ValueError(f"the noise scale on one device splits its batch in two halves; "
                     f"batch {per_device} does not")
  return per_device // 2, global_batch, 2


def squared_norm(tree: Any) -> jnp.ndarray:
  """:math:`\\sum_i x_i^2` over every leaf of a gradient pytree, in float32."""
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


class NoiseScaleEMA(NamedTuple):
  r"""Exponential moving averages of :math:`|\mathcal{G}|^2` and :math:`\mathcal{S}` across
  logging windows, and their ratio B_simple (McCandlish et al. 2018 App. A.1).

  Immutable, like an optax state: ``ema = ema.update(...)`` once per logging window, with the
  window's means of ``train_grad_sq_small`` and ``train_grad_sq_big`` (the estimators are linear
  in them, so the window mean of per-step estimates is the estimate of the window means).

  ``g_sq`` and ``trace_sigma`` hold the unnormalised averages
  :math:`m_t = \beta m_{t-1} + (1 - \beta) x_t` from :math:`m_0 = 0`, and ``weight`` is
  :math:`1 - \beta^t`, the bias correction (as Adam's); it cancels in the ratio.
  """
  g_sq: float = 0.0
  trace_sigma: float = 0.0
  weight: float = 0.0

  def update(self, sq_small, sq_big, b_small, b_big, decay: float = 0.9) -> "NoiseScaleEMA":
    """The averages after one more window (``decay`` = β per window, ``0 <= β < 1``)."""
    if not 0.0 <= decay < 1.0:
      raise ValueError(f"decay must be in [0, 1), got {decay}")
    g_sq, trace_sigma = unbiased_estimates(float(sq_small), float(sq_big), b_small, b_big)
    return NoiseScaleEMA(decay * self.g_sq + (1.0 - decay) * g_sq,
                         decay * self.trace_sigma + (1.0 - decay) * trace_sigma,
                         decay * self.weight + (1.0 - decay))

  @classmethod
  def replay(cls, records: Iterable[dict], b_small, b_big, decay: float = 0.9
             ) -> "NoiseScaleEMA":
    """The averages after the windows logged in ``records`` (``metrics.jsonl``'s records, in
    order; those without ``train_grad_sq_small`` and ``train_grad_sq_big`` are skipped).

    A resumed run truncates ``metrics.jsonl`` to its checkpoint's step, so replaying it gives
    the same averages as a run that was never interrupted.
    """
    ema = cls()
    for r in records:
      if "train_grad_sq_small" in r and "train_grad_sq_big" in r:
        ema = ema.update(r["train_grad_sq_small"], r["train_grad_sq_big"], b_small, b_big, decay)
    return ema

  @property
  def b_simple(self) -> float:
    """:math:`\\overline{\\mathcal{S}} / \\overline{|\\mathcal{G}|^2}`; NaN before any window."""
    if self.weight == 0.0 or self.g_sq == 0.0:
      return float("nan")
    return self.trace_sigma / self.g_sq

  def values(self) -> dict[str, float]:
    """The bias-corrected averages and their ratio: ``grad_sq``, ``trace_sigma`` and
    ``noise_scale`` (B_simple); NaN before any window."""
    if self.weight == 0.0:
      nan = float("nan")
      return {"grad_sq": nan, "trace_sigma": nan, "noise_scale": nan}
    return {"grad_sq": self.g_sq / self.weight, "trace_sigma": self.trace_sigma / self.weight,
            "noise_scale": self.b_simple}


def _window_estimates(record: dict, b_small: float | None, b_big: float | None
                      ) -> tuple[float, float] | None:
  """``(g_sq, trace_sigma)`` of one ``metrics.jsonl`` record (`window_b_simple`), or None for a
  record that is not a training window with them."""
  if "train_noise_g_sq" in record and "train_noise_trace_sigma" in record:
    return record["train_noise_g_sq"], record["train_noise_trace_sigma"]
  if "train_grad_sq_small" in record and "train_grad_sq_big" in record and b_small and b_big:
    return unbiased_estimates(record["train_grad_sq_small"], record["train_grad_sq_big"], b_small,
                              b_big)
  return None


def window_b_simple(records: Iterable[dict], start: float, end: float,
                    b_small: float | None = None, b_big: float | None = None) -> float | None:
  r"""B_simple over the logging windows of ``records`` that end in ``(start, end]``.

  ``records`` are ``metrics.jsonl``'s. Each training window's unbiased estimates
  :math:`|\mathcal{G}|^2` and :math:`\mathcal{S}` are ``train_noise_g_sq`` and
  ``train_noise_trace_sigma`` (written by the loop with ``config.log_noise_scale``), or, in
  records without them, `unbiased_estimates` of its ``train_grad_sq_small`` /
  ``train_grad_sq_big`` at ``b_small`` / ``b_big`` (skipped when those are not given). A window
  spans the steps since the previous training window (or step 0); the estimates are averaged
  over the windows ending in ``(start, end]``, each weighted by its steps (the estimators are
  linear in the step means), then B_simple is their ratio — McCandlish et al.'s average of
  numerator and denominator before the ratio, over a stated stretch of training instead of an
  exponential average that ends wherever the run ends.

  Returns:
    None without such a window; NaN when the mean :math:`|\mathcal{G}|^2` is not positive.
  """
  previous, total, g_sq, trace_sigma = 0, 0, 0.0, 0.0
  for r in sorted(records, key=lambda r: r["step"]):
    estimates = _window_estimates(r, b_small, b_big)
    if estimates is None:
      continue
    g, s = estimates
    length, previous = r["step"] - previous, r["step"]
    if start < r["step"] <= end:
      total += length
      g_sq += length * g
      trace_sigma += length * s
  if not total:
    return None
  return float(trace_sigma / g_sq) if g_sq > 0 else float("nan")


def second_half_b_simple(records: Iterable[dict], b_small: float | None = None,
                         b_big: float | None = None) -> float | None:
  """`window_b_simple` over the second half of the logged training, ``(S/2, S]`` with S the
  last step of a window that has the estimates; None without one."""
  records = list(records)
  steps = [r["step"] for r in records if _window_estimates(r, b_small, b_big) is not None]
  if not steps:
    return None
  return window_b_simple(records, max(steps) / 2, max(steps), b_small, b_big)
