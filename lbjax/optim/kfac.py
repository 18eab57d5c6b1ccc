r"""K-FAC: a block-diagonal Kronecker-factored natural-gradient preconditioner (seed 002 §2.5).

Seed 002 (Naganuma, Iwase, Kaku, Nakata & Yokota, "自然勾配近似法を用いた大規模並列深層学習における
ハイパーパラメータ最適化") trains with the natural gradient, eq. (3) ``w ← w − ε F⁻¹∇L``, where
the Fisher ``F`` is approximated block-diagonally by layer (eq. (9)) and each block by a Kronecker
product (Martens & Grosse 2015), so its inverse is the product of two small inverses
(eqs. (10)–(12)):

.. math::

  F_{i,i} ≈ \bar A_{i-1} ⊗ G_i, \qquad F_{i,i}^{-1} ≈ \bar A_{i-1}^{-1} ⊗ G_i^{-1}.

For every covered layer (a ``kernel`` of shape ``[..., d_out]`` with an optional ``bias [d_out]``;
``lbjax/optim/kfac_capture.py`` collects the statistics of flax ``nn.Dense`` and ``nn.Conv``):

* ``a``: the layer input, with a homogeneous 1 appended when the layer has a bias, so the bias is
  the last row of the ``[d_in + 1, d_out]`` weight block. For a convolution ``a`` is the input patch
  under the kernel at one output location ``t`` (KFC, Grosse & Martens 2016).
* ``g``: the gradient of an example's loss with respect to the layer's pre-activation output ``s``.
* Kronecker factors (mean over the batch; KFC's spatial homogeneity for the ``T`` locations):

  .. math::

    A = \tfrac{1}{BT} \sum_{n,t} a_{n,t} a_{n,t}^T, \qquad
    G = \tfrac{1}{B} \sum_{n,t} g_{n,t} g_{n,t}^T .

  ``T = 1`` for a dense layer. (kfac-jax writes the same block as ``T · A ⊗ (G / T)``.)
* Exponential moving averages with ``ρ = cov_ema_decay``, bias-corrected like Adam's moments (and
  identical to kfac-jax's weighted average), so the first refresh uses the first batch alone:
  ``S_k = ρ S_{k−1} + (1 − ρ) A_k``, ``Ā_k = S_k / (1 − ρ^k)``; likewise ``Ḡ``. ``k`` counts
  *refreshes*: with ``factor_update_period = τ`` the statistics are those of the steps
  ``0, τ, 2τ, …`` only (refresh ``k`` is the statistics of step ``(k − 1)·τ``), each folded in
  once with ``ρ``, as kfac-pytorch (KAISA) applies its ``factor_decay`` once per
  ``factor_update_steps``. After ``k`` refreshes

  .. math::

    \bar A = \frac{\sum_{j=1}^{k} (1 − ρ) ρ^{k−j} A_{(j−1)τ}}{1 − ρ^k}.

* Factored Tikhonov damping with the π-split of Martens & Grosse 2015 §6.3 (trace norm),
  ``γ = √damping``:

  .. math::

    π = \sqrt{\frac{\operatorname{tr}(\bar A)/\dim \bar A}{\operatorname{tr}(\bar G)/\dim \bar G}},
    \qquad (\bar A + πγ I)^{-1}, \quad (\bar G + \tfrac{γ}{π} I)^{-1},

  recomputed (Cholesky) on the steps ``n`` with ``n % inverse_update_period == 0`` (the first
  included) and kept in between. Both periods count optimizer updates (steps, ``state.count``),
  as KAISA's ``factor_update_steps`` and ``inv_update_steps`` do, and ``inverse_update_period``
  must be a multiple of ``factor_update_period``: an inverse is only ever recomputed at a
  refresh, from the factors just updated. With ``τ = 1`` every step is a refresh, so the period
  counts statistics updates, as it always has.
* Preconditioned gradient ``G⁻¹ ∇W A⁻¹`` per block. flax stores kernels as ``[d_in, d_out]``
  (the transpose of the paper's ``W``), so here it reads ``A⁻¹ [∇W; ∇b] G⁻¹``.

Parameters outside covered layers (BatchNorm scale and bias, …) pass through unchanged, i.e. they
get plain momentum SGD from the rest of the chain. :func:`kfac` then applies weight decay and the
momentum update of seed 002 eqs. (1)–(2): ``m ← α m − ε (ĝ + λ w)``, ``w ← w + m``.

The update takes the statistics of the current batch as the keyword argument ``kfac_stats``
(``optax.GradientTransformationExtraArgs``, like kfac-jax's optax interface): a dict
``{layer: {"a": A, "g": G}}`` whose layer names are the ``/``-joined parameter paths
(``"stage1_block1/conv1"``). The train step averages them over devices (``lax.pmean``) before the
update, so every replica preconditions identically and the result does not depend on the device
count.

**Statistics every τ steps** (``factor_update_period = τ``, KAISA's ``factor_update_steps``): the
statistics, K-FAC's extra cost in the forward/backward pass (for a convolution, the second
moment of its patches: about 1–1.4 SGD steps on LeNet-5 at batch 128 on the 2-core CPU,
``benchmarks/kfac_period.py``), are needed on the *statistics steps* only, the updates ``n``
(``state.count``, from 0) with ``n % τ == 0``. The train step captures them there
(``lbjax.step.Experiment.statistics_at``) and runs the plain forward/backward pass on the other
steps, whose update passes no ``kfac_stats``: factors and inverses are kept, and the gradient is
preconditioned with the current inverses. A missing input is never a silent fallback: with
``τ = 1`` an update without ``kfac_stats`` raises ``ValueError``; with ``τ > 1`` an update
without them *at a statistics step* returns NaN updates, so a run stops there as diverged rather
than train on with a refresh skipped. Statistics passed on any other step are not folded in
(only steps ``0, τ, 2τ, …`` count), so the capture program alone, run on every step, takes the
updates the pair of programs takes (up to the float rounding of the two backward passes), at the
capture's cost.

References:
  Martens & Grosse 2015, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature",
  ICML. Grosse & Martens 2016, "A Kronecker-factored approximate Fisher matrix for convolution
  layers" (KFC), ICML.
"""

from collections.abc import Sequence
import math
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import optax

from lbjax.optim import checks

# Factor statistics are sums of many products; keep them in full float32 on GPU/TPU too.
_HIGHEST = lax.Precision.HIGHEST


# --------------------------------------------------------------------------- factor statistics


def _second_moment(a: jax.Array, has_bias: bool) -> jax.Array:
  """``E[ā āᵀ]`` over the rows of ``a [N, d]``, ``ā = [a, 1]`` with a bias (homogeneous 1)."""
  a = a.astype(jnp.float32)
  n = a.shape[0]
  aa = jnp.matmul(a.T, a, precision=_HIGHEST) / n
  if not has_bias:
    return aa
  mean = jnp.mean(a, axis=0)
  top = jnp.concatenate([aa, mean[:, None]], axis=1)
  bottom = jnp.concatenate([mean, jnp.ones((1,), a.dtype)])[None]
  return jnp.concatenate([top, bottom], axis=0)


def dense_input_factor(x: jax.Array, has_bias: bool) -> jax.Array:
  """A of a dense layer: ``x [batch, ..., d_in]``; extra axes count as locations."""
  return _second_moment(x.reshape(-1, x.shape[-1]), has_bias)


def conv_patches(x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int],
                 padding: Sequence[tuple[int, int]]) -> jax.Array:
  """KFC patches of ``x [batch, *spatial, c]``: ``[batch * locations, prod(kernel_size) * c]``.

  A patch is ordered ``(*kernel offset, channel)``, the order of a flax kernel
  ``[*kernel_size, c_in, c_out]`` reshaped to ``[-1, c_out]``, so ``patch @ kernel`` is the
  convolution's output at that location (without bias). 1 to 3 spatial dimensions.
  """
  spatial = "DHW"[-len(kernel_size):]
  lhs = f"N{spatial}C"
  patches = lax.conv_general_dilated_patches(
      x, tuple(kernel_size), tuple(strides), tuple(padding),
      dimension_numbers=(lhs, f"OI{spatial}", lhs), precision=_HIGHEST)
  # lax orders a patch (channel, *offset).
  c, k = x.shape[-1], math.prod(kernel_size)
  return jnp.swapaxes(patches.reshape(-1, c, k), 1, 2).reshape(-1, k * c)


def conv_input_factor(x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int],
                      padding: Sequence[tuple[int, int]], has_bias: bool) -> jax.Array:
  """A of a convolution (KFC): the second moment of its patches over examples and locations."""
  return _second_moment(conv_patches(x, kernel_size, strides, padding), has_bias)


def output_factor(output_grad: jax.Array) -> jax.Array:
  """G from ``dL/ds [batch, ..., d_out]`` of the batch-mean loss ``L``.

  The per-example gradient is ``g = batch · dL/ds``, so ``G = (1/B) Σ_{n,t} g gᵀ
  = B Σ_{n,t} (dL/ds)(dL/ds)ᵀ``.
  """
  batch = output_grad.shape[0]
  ds = output_grad.reshape(-1, output_grad.shape[-1]).astype(jnp.float32)
  return batch * jnp.matmul(ds.T, ds, precision=_HIGHEST)


# --------------------------------------------------------------------------- damping and inverses


def _spd_inverse(m: jax.Array) -> jax.Array:
  chol = jnp.linalg.cholesky(m)
  return jax.scipy.linalg.cho_solve((chol, True), jnp.eye(m.shape[0], dtype=m.dtype))


def damped_inverses(a: jax.Array, g: jax.Array, damping) -> tuple[jax.Array, jax.Array]:
  """``((A + πγI)⁻¹, (G + γ/π I)⁻¹)`` with ``γ = √damping`` and the trace-norm π."""
  tiny = jnp.finfo(jnp.float32).tiny
  a_norm = jnp.maximum(jnp.trace(a) / a.shape[0], tiny)
  g_norm = jnp.maximum(jnp.trace(g) / g.shape[0], tiny)
  pi = jnp.sqrt(a_norm / g_norm)
  gamma = jnp.sqrt(damping)
  return (_spd_inverse(a + pi * gamma * jnp.eye(a.shape[0], dtype=a.dtype)),
          _spd_inverse(g + gamma / pi * jnp.eye(g.shape[0], dtype=g.dtype)))


# --------------------------------------------------------------------------- layers of a param tree


class _Layer(NamedTuple):
  kernel: int            # leaf index of the kernel in the flattened tree
  bias: int | None    # leaf index of the bias, or None
  shape: tuple[int, int]  # (dim A, dim G)


def covered_layers(params) -> dict[str, _Layer]:
  """The K-FAC blocks of ``params``: every ``kernel`` with ndim >= 2, with its sibling ``bias``.

  Keys are the ``/``-joined paths of the layers (``"conv1"``, ``"stage1_block1/conv2"``), the
  module paths under which the capture stores the statistics.
  """
  leaves = jax.tree_util.tree_leaves_with_path(params)
  names = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in leaves]
  index = {name: i for i, name in enumerate(names)}
  layers = {}
  for i, (name, (_, leaf)) in enumerate(zip(names, leaves)):
    layer, _, last = name.rpartition("/")
    if last != "kernel" or jnp.ndim(leaf) < 2:
      continue
    bias = index.get(f"{layer}/bias" if layer else "bias")
    d_out = leaf.shape[-1]
    if bias is not None and jnp.shape(leaves[bias][1]) != (d_out,):
      bias = None
    d_in = math.prod(leaf.shape[:-1]) + (bias is not None)
    layers[layer] = _Layer(i, bias, (d_in, d_out))
  return layers


# --------------------------------------------------------------------------- the transformation


class ScaleByKFACState(NamedTuple):
  """State of :func:`scale_by_kfac`.

  Attributes:
    count: updates so far (int32), every step counted, statistics or not: the index ``n`` of the
      next update, which fixes whether it is a statistics step (``n % factor_update_period ==
      0``), how many refreshes the factors hold (``⌈n / factor_update_period⌉``) and whether the
      inverses are recomputed. Part of the checkpoint, so a resumed run continues exactly. With
      ``factor_update_period = 1`` it counts statistics updates, as it always has.
    factors: ``{layer: {"a": S_A, "g": S_G}}``, the moving-average sums before bias correction.
    inverses: ``{layer: {"a": (Ā + πγI)⁻¹, "g": (Ḡ + γ/π I)⁻¹}}`` in use (identity initially).
  """
  count: jax.Array
  factors: dict[str, dict[str, jax.Array]]
  inverses: dict[str, dict[str, jax.Array]]


def _check_period(argument: str, value) -> None:
  if isinstance(value, bool):
    raise checks.InvalidArgument(argument, f"must be an integer >= 1, got {value!r}")
  checks.check(argument, value, lambda v: v >= 1 and v == int(v), "an integer >= 1")


def scale_by_kfac(cov_ema_decay: float = 0.99, damping: float = 1e-3,
                  inverse_update_period: int = 1, factor_update_period: int = 1
                  ) -> optax.GradientTransformationExtraArgs:
  """Preconditions the gradient of every covered layer with its damped Kronecker-factored inverse.

  ``update(grads, state, params=None, *, kfac_stats=None)`` is update ``n = state.count``. At a
  statistics step (``n % factor_update_period == 0``) ``kfac_stats`` (the current batch's
  ``{layer: {"a": A, "g": G}}``, already averaged over devices) is folded into the factor
  averages once with ``cov_ema_decay``, and if ``n % inverse_update_period == 0`` too the
  inverses are recomputed from them; on the other steps ``kfac_stats`` is not needed (None:
  the plain step) and not used, and factors and inverses are kept. Then
  ``[∇W; ∇b] ← A⁻¹ [∇W; ∇b] G⁻¹`` for every covered layer with the inverses in use. Other leaves,
  and layers absent from ``kfac_stats``, keep their current inverses (identity before their
  first statistics). Module doc: the moving average's weights, and why a missing input raises
  (``factor_update_period`` 1) or makes the update NaN (at a statistics step otherwise).

  Args:
    cov_ema_decay: ρ of the factor moving averages, applied once per refresh (seed 002
      "cov-ema-decay"; KAISA's ``factor_decay``; default 0.99).
    damping: λ of the factored Tikhonov damping, ``γ = √λ`` per factor with the π-split
      (seed 002 "damping"; default 1e-3).
    inverse_update_period: steps between inverse recomputations, the first step included; a
      multiple of ``factor_update_period`` (default 1: every step, exact per-step K-FAC; the seed
      does not list it; KAISA's ``inv_update_steps``). Raise it for wide layers.
    factor_update_period: steps between statistics (default 1: every step, K-FAC as the seed
      runs it; KAISA's ``factor_update_steps``). The train step captures the statistics only on
      the steps ``n % factor_update_period == 0`` (``config.optimizer.factor_update_period``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  checks.in_unit_interval("cov_ema_decay", cov_ema_decay)
  checks.positive("damping", damping)
  _check_period("inverse_update_period", inverse_update_period)
  _check_period("factor_update_period", factor_update_period)
  checks.check("inverse_update_period", inverse_update_period,
               lambda v: v % (checks.concrete(factor_update_period) or v) == 0,
               f"a multiple of factor_update_period={factor_update_period!r} (the inverses are "
               "recomputed at statistics steps only)")
  every_step = checks.concrete(factor_update_period) == 1  # static: τ = 1, today's K-FAC

  def init_fn(params):
    layers = covered_layers(params)
    zeros = {name: {"a": jnp.zeros((l.shape[0],) * 2), "g": jnp.zeros((l.shape[1],) * 2)}
             for name, l in layers.items()}
    eyes = {name: {"a": jnp.eye(l.shape[0]), "g": jnp.eye(l.shape[1])}
            for name, l in layers.items()}
    return ScaleByKFACState(count=jnp.zeros((), jnp.int32), factors=zeros, inverses=eyes)

  def update_fn(updates, state, params=None, *, kfac_stats=None, **extra_args):
    del params, extra_args
    layers = covered_layers(updates)
    factors, inverses, step = state.factors, state.inverses, state.count
    statistics_step = True if every_step else step % factor_update_period == 0
    if kfac_stats is None and every_step:
      raise ValueError("K-FAC with factor_update_period=1 needs kfac_stats on every update (the "
                       "statistics of the batch, lbjax.optim.kfac_capture); set "
                       "factor_update_period > 1 to update without them between statistics")
    if kfac_stats is not None:
      _check_stats(kfac_stats, layers)
      factors = dict(factors)
      for name, stats in kfac_stats.items():
        folded = {k: cov_ema_decay * factors[name][k] + (1.0 - cov_ema_decay) * stats[k]
                  for k in ("a", "g")}
        factors[name] = folded if every_step else {
            k: jnp.where(statistics_step, folded[k], factors[name][k]) for k in ("a", "g")}
      refreshes = step // factor_update_period + 1  # at a statistics step, this one included
      correction = 1.0 - jnp.float32(cov_ema_decay) ** refreshes.astype(jnp.float32)

      def refresh():
        new = dict(inverses)
        for name in kfac_stats:
          a_inv, g_inv = damped_inverses(factors[name]["a"] / correction,
                                         factors[name]["g"] / correction, damping)
          new[name] = {"a": a_inv, "g": g_inv}
        return new

      due = step % inverse_update_period == 0
      inverses = lax.cond(due if every_step else due & statistics_step, refresh,
                          lambda: dict(inverses))

    leaves, treedef = jax.tree.flatten(updates)
    leaves = list(leaves)
    for name, layer in layers.items():
      kernel = leaves[layer.kernel]
      bias = None if layer.bias is None else leaves[layer.bias]
      new_kernel, new_bias = precondition(kernel, bias, inverses[name]["a"], inverses[name]["g"])
      leaves[layer.kernel] = new_kernel
      if layer.bias is not None:
        leaves[layer.bias] = new_bias
    if kfac_stats is None:  # a statistics step without statistics: NaN, never a silent skip
      leaves = [jnp.where(statistics_step, jnp.nan, leaf).astype(leaf.dtype) for leaf in leaves]
    return (jax.tree.unflatten(treedef, leaves),
            ScaleByKFACState(count=step + 1, factors=factors, inverses=inverses))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def precondition(kernel_grad: jax.Array, bias_grad: jax.Array | None, a_inv: jax.Array,
                 g_inv: jax.Array) -> tuple[jax.Array, jax.Array | None]:
  """``A⁻¹ [∇W; ∇b] G⁻¹`` for a kernel ``[..., d_out]`` (flattened to ``[d_in, d_out]``)."""
  d_out = kernel_grad.shape[-1]
  block = kernel_grad.reshape(-1, d_out)
  if bias_grad is not None:
    block = jnp.concatenate([block, bias_grad[None]], axis=0)
  block = jnp.matmul(jnp.matmul(a_inv, block.astype(a_inv.dtype), precision=_HIGHEST), g_inv,
                     precision=_HIGHEST)
  new_kernel = block[:kernel_grad.size // d_out].reshape(kernel_grad.shape)
  new_kernel = new_kernel.astype(kernel_grad.dtype)
  new_bias = None if bias_grad is None else block[-1].astype(bias_grad.dtype)
  return new_kernel, new_bias


def _check_stats(kfac_stats, layers) -> None:
  for name, stats in kfac_stats.items():
    if name not in layers:
      raise ValueError(f"kfac_stats has layer {name!r}, which has no kernel in the parameters; "
                       f"covered layers: {', '.join(layers)}")
    want = layers[name].shape
    got = (jnp.shape(stats["a"]), jnp.shape(stats["g"]))
    if got != ((want[0],) * 2, (want[1],) * 2):
      raise ValueError(f"kfac_stats[{name!r}] has factor shapes {got}, expected "
                       f"{((want[0],) * 2, (want[1],) * 2)} from its parameters")


# --------------------------------------------------------------------------- the optimizer


def kfac(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9,
         weight_decay: optax.ScalarOrSchedule = 0.0, cov_ema_decay: float = 0.99,
         damping: float = 1e-3, inverse_update_period: int = 1,
         mask: optax.MaskOrFn = None, factor_update_period: int = 1
         ) -> optax.GradientTransformationExtraArgs:
  """K-FAC with momentum and weight decay, as seed 002 tunes it (Table 1).

  ``ĝ = F̃⁻¹ ∇L`` (:func:`scale_by_kfac`), then seed 002 eqs. (1)–(2) with L2 weight decay on the
  preconditioned direction: ``m ← α m − ε (ĝ + λ w)``, ``w ← w + m``. The decay bypasses the
  curvature, so its strength does not depend on the damping (as kfac-pytorch applies it).

  Args:
    learning_rate: ε, a float or an optax schedule (seed 002: step decay by "lr-decay" every
      "lr-decay-epoch" epochs, see ``lbjax/schedules.py``).
    momentum: α (default 0.9).
    weight_decay: λ, on the tensors selected by ``mask`` (default 0), a float or a schedule.
    cov_ema_decay: see :func:`scale_by_kfac` (default 0.99).
    damping: see :func:`scale_by_kfac` (default 1e-3).
    inverse_update_period: see :func:`scale_by_kfac` (default 1).
    mask: pytree (or callable) of booleans selecting the tensors that get weight decay (None:
      every tensor).
    factor_update_period: τ, steps between statistics (default 1: every step); see
      :func:`scale_by_kfac` and the module doc. A step costs about ``1 + c/τ + d/P`` SGD
      steps (``c``: the statistics, ``d``: the inverses, ``P = inverse_update_period``)
      instead of ``1 + c + d``; ``benchmarks/kfac_period.py`` measures them.

  How the statistics are estimated (``config.optimizer.fisher``: empirical or sampled Fisher) is
  a setting of the capture that makes them, ``lbjax.optim.kfac_capture.make_capture``, not of
  this transformation.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose update takes ``kfac_stats=``.

  Example::

    tx = kfac(0.01, damping=1e-3)
    capture = kfac_capture.make_capture(model, loss)
    (loss, aux), grads, stats = capture(params, batch_stats, images, targets, keys)
    updates, opt_state = tx.update(grads, opt_state, params, kfac_stats=stats)
  """
  checks.in_unit_interval("momentum", momentum)
  checks.non_negative("weight_decay", weight_decay)
  return optax.chain(
      scale_by_kfac(cov_ema_decay, damping, inverse_update_period, factor_update_period),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum),
  )
