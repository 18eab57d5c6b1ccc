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
  identical to kfac-jax's weighted average), so the first step uses the first batch alone:
  ``S_k = ρ S_{k−1} + (1 − ρ) A_k``, ``Ā_k = S_k / (1 − ρ^k)``; likewise ``Ḡ``.
* Factored Tikhonov damping with the π-split of Martens & Grosse 2015 §6.3 (trace norm),
  ``γ = √damping``:

  .. math::

    π = \sqrt{\frac{\operatorname{tr}(\bar A)/\dim \bar A}{\operatorname{tr}(\bar G)/\dim \bar G}},
    \qquad (\bar A + πγ I)^{-1}, \quad (\bar G + \tfrac{γ}{π} I)^{-1},

  recomputed (Cholesky) every ``inverse_update_period`` statistics updates and kept in between.
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
count. Without ``kfac_stats`` the factors and inverses are left as they are (identity before the
first statistics: momentum SGD).

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
    count: statistics updates so far (int32).
    factors: ``{layer: {"a": S_A, "g": S_G}}``, the moving-average sums before bias correction.
    inverses: ``{layer: {"a": (Ā + πγI)⁻¹, "g": (Ḡ + γ/π I)⁻¹}}`` in use (identity initially).
  """
  count: jax.Array
  factors: dict[str, dict[str, jax.Array]]
  inverses: dict[str, dict[str, jax.Array]]


def scale_by_kfac(cov_ema_decay: float = 0.99, damping: float = 1e-3,
                  inverse_update_period: int = 1) -> optax.GradientTransformationExtraArgs:
  """Preconditions the gradient of every covered layer with its damped Kronecker-factored inverse.

  ``update(grads, state, params=None, *, kfac_stats=None)``: with ``kfac_stats`` (the current
  batch's ``{layer: {"a": A, "g": G}}``, already averaged over devices) the factor averages are
  updated, and every ``inverse_update_period``-th time (the first included) the inverses are
  recomputed; then ``[∇W; ∇b] ← A⁻¹ [∇W; ∇b] G⁻¹`` for every covered layer. Other leaves, and layers
  absent from ``kfac_stats``, keep their current inverses (identity before their first statistics).

  Args:
    cov_ema_decay: ρ of the factor moving averages (seed 002 "cov-ema-decay"; default 0.99).
    damping: λ of the factored Tikhonov damping, ``γ = √λ`` per factor with the π-split
      (seed 002 "damping"; default 1e-3).
    inverse_update_period: statistics updates between inverse recomputations (default 1: every
      step, exact per-step K-FAC; the seed does not list it). Raise it for wide layers.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  checks.in_unit_interval("cov_ema_decay", cov_ema_decay)
  checks.positive("damping", damping)
  if isinstance(inverse_update_period, bool):
    raise checks.InvalidArgument("inverse_update_period",
                                 f"must be an integer >= 1, got {inverse_update_period!r}")
  checks.check("inverse_update_period", inverse_update_period,
               lambda v: v >= 1 and v == int(v), "an integer >= 1")

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
    factors, inverses, count = state.factors, state.inverses, state.count
    if kfac_stats is not None:
      _check_stats(kfac_stats, layers)
      factors = dict(factors)
      for name, stats in kfac_stats.items():
        factors[name] = {k: cov_ema_decay * factors[name][k] + (1.0 - cov_ema_decay) * stats[k]
                         for k in ("a", "g")}
      count = state.count + 1
      correction = 1.0 - jnp.float32(cov_ema_decay) ** count.astype(jnp.float32)

      def refresh():
        new = dict(inverses)
        for name in kfac_stats:
          a_inv, g_inv = damped_inverses(factors[name]["a"] / correction,
                                         factors[name]["g"] / correction, damping)
          new[name] = {"a": a_inv, "g": g_inv}
        return new

      inverses = lax.cond(state.count % inverse_update_period == 0, refresh,
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
    return (jax.tree.unflatten(treedef, leaves),
            ScaleByKFACState(count=count, factors=factors, inverses=inverses))

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
         mask: optax.MaskOrFn = None) -> optax.GradientTransformationExtraArgs:
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
      scale_by_kfac(cov_ema_decay, damping, inverse_update_period),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum),
  )
