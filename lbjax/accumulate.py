"""Gradient accumulation: one optimizer update of a batch computed in micro-batches.

The per-device batch of ``b`` examples is split, in order, into ``n = b / m`` micro-batches of
``m = config.micro_batch_size`` examples (per device, like ``config.model.ghost_batch_size``).
With ``L_k`` the mean loss of micro-batch ``k``,

  L = (1/n) Σ_k L_k,   ∇L = (1/n) Σ_k ∇L_k,

so the mean of the micro-batch gradients *is* the gradient of the whole batch, and the optimizer
takes one update with it: LARS's norms, the hybrid's moments, update noise and K-FAC see exactly
the large-batch gradient. The same mean gives the batch's K-FAC statistics: ``A`` is a mean over
examples, and ``G`` of a mean loss (``lbjax.optim.kfac.output_factor``) is ``(1/m) Σ g gᵀ`` per
micro-batch, so the mean over equal micro-batches is the whole batch's ``(1/b) Σ g gᵀ``. The loss
and the accuracy are means too. ``state.step`` counts optimizer updates, so schedules, epochs,
checkpoints and the data stream are those of the unaccumulated run.

BatchNorm is the one place where the micro-batch shows. A training forward pass normalises with
the moments of the examples it sees, so each micro-batch is normalised with its own statistics
(with ``axis_name``, those of the micro-batches of all devices together): plain BatchNorm under
accumulation is Ghost BatchNorm with ghost size ``m``. ``config.model.ghost_batch_size``
(``lbjax/models/layers.py``) makes that an explicit choice: with ghost batches dividing ``m``,
the normalisation is the same with and without accumulation, on any number of devices. The
running averages take **one** momentum step per optimizer update with the mean of the
micro-batches' moments,

  ra <- mean_k (μ·ra + (1-μ)·s_k) = μ·ra + (1-μ)·mean_k s_k,

i.e. the mean of the running averages each micro-batch computes from the same ``ra`` — the rule
Ghost BN uses over ghost batches and the train step over devices — so their time scale stays in
optimizer updates, and with ghost batches dividing ``m`` they equal the unaccumulated ones.

Augmentation runs per micro-batch. Every random draw comes from the example's own key and CutMix
mixes aligned row pairs, so the augmented batch is the same when micro-batches hold whole pairs
(:func:`validate_config`).

The micro-batches run in one of two ways, ``config.accumulation`` (:data:`MODES`):

* ``"scan"`` (:func:`scan_step`): a ``lax.scan`` inside the one compiled train step.
* ``"host"`` (:func:`host_step`): the host dispatches ``n`` micro-step programs, each adding
  its terms into a sum kept on device, then one update program. Same arithmetic, ``n + 2`` dispatches.
* ``"auto"``: :data:`AUTO` by backend. On XLA:CPU (jax 0.10.2) ``host`` is 2.6-6x faster than
  ``scan``, whose loop body keeps the weight-gradient convolutions in a layout the CPU backend
  runs slowly (``benchmarks/accumulation.py``); elsewhere ``scan`` (one dispatch; not measured
  here).

Memory is one micro-batch's activations plus the gradient sum in both modes.

**Halves for the gradient noise scale** (``config.log_noise_scale``, `lbjax.noise_scale`): the
estimate needs each device's batch in at least two pieces with their own mean gradients. Across
devices or micro-batches the pieces exist already; on a device axis of **one** device without
micro-batches (``halves=True`` in :func:`scan_step` and :func:`host_step`) the step runs as two
micro-batches of ``b/2``, unrolled (no loop). The update is the same mean gradient, but with
BatchNorm each half is normalised with its own statistics, as Ghost BatchNorm of ``b/2`` would:
logging the noise scale changes training in exactly that case (one device, no micro-batches,
a model with BatchNorm), and in no other.
"""

from collections.abc import Callable
import functools
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lbjax import mesh as mesh_lib
from lbjax.data import augment
from lbjax.errors import ConfigError
from lbjax.errors import check_choice

MODES = ("auto", "scan", "host")
AUTO = {"cpu": "host"}  # backend -> mode; any other backend: "scan"


class StepParts(NamedTuple):
  """A per-device train step in the two pieces accumulation recombines (``lbjax.train``).

  ``terms(state, batch) -> tree`` holds this device's means over ``batch`` (loss, accuracy,
  gradients, new running BatchNorm averages, K-FAC statistics); ``apply(state, terms) ->
  (state, metrics)`` averages them over the device axis and takes one optimizer update. The
  unaccumulated step is ``apply(state, terms(state, batch))``.
  """
  terms: Callable[[Any, Any], Any]
  apply: Callable[[Any, Any], tuple[Any, Any]]


def resolve_mode(mode: str, backend: str | None = None) -> str:
  """``"scan"`` or ``"host"`` for ``config.accumulation`` on ``backend`` (default: JAX's)."""
  check_choice("config.accumulation", mode, MODES)
  if mode != "auto":
    return mode
  return AUTO.get(backend or jax.default_backend(), "scan")


def num_micro_batches(batch: int, micro_batch_size: int | None) -> int:
  """``batch / micro_batch_size``, 1 when accumulation is off; ConfigError when not whole."""
  if micro_batch_size is None or micro_batch_size >= batch:
    return 1
  if batch % micro_batch_size:
    raise ConfigError("config.micro_batch_size",
                      f"the per-device batch of {batch} examples is not divisible by "
                      f"micro_batch_size={micro_batch_size}")
  return batch // micro_batch_size


def _batch_size(batch) -> int:
  return jax.tree.leaves(batch)[0].shape[0]


def split(tree, n: int):
  """``[b, ...]`` leaves → ``[n, b/n, ...]``: micro-batch ``k`` is rows ``[k·b/n, (k+1)·b/n)``."""
  return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), tree)


def micro_batch(tree, k, size: int):
  """Rows ``[k·size, (k+1)·size)`` of every leaf (``k`` may be traced)."""
  return jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, k * size, size), tree)


def zeros_like_sum(tree):
  """Zeros shaped like ``tree`` (arrays or ShapeDtypeStructs), at least float32: sums of
  low-precision terms are kept in float32."""
  return jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)), tree)


def add(total, tree):
  return jax.tree.map(lambda t, x: t + x.astype(t.dtype), total, tree)


def mean_of_sum(total, n: int, like):
  """``total / n`` in the dtypes of ``like``."""
  return jax.tree.map(lambda t, s: (t / n).astype(s.dtype), total, like)


def accumulate(fn: Callable, micro_batch_size: int | None, *, unroll: bool = False
               ) -> Callable:
  """``fn(batch)``, a tree of means over ``batch``, computed micro-batch by micro-batch.

  Args:
    fn: ``fn(batch) -> tree`` whose leaves are means over the examples of ``batch`` (a tree of
      ``[b, ...]`` arrays).
    micro_batch_size: examples per micro-batch; None (or ``>= b``) calls ``fn`` once.
    unroll: unroll the scan into straight-line code (the noise scale's two halves).

  Returns:
    ``batch -> tree``: the mean of ``fn`` over the ``b / micro_batch_size`` micro-batches,
    accumulated in one ``lax.scan`` (so only one micro-batch's intermediates are live). It
    equals ``fn(batch)`` for every leaf that is a mean over examples.
  """

  def accumulated(batch):
    n = num_micro_batches(_batch_size(batch), micro_batch_size)
    if n == 1:
      return fn(batch)
    micro = split(batch, n)
    like = jax.eval_shape(fn, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                                           micro))

    def body(total, one):
      return add(total, fn(one)), None

    total, _ = lax.scan(body, zeros_like_sum(like), micro, unroll=unroll)
    return mean_of_sum(total, n, like)

  return accumulated


def halves_apply(batch: int, micro_batch_size: int | None, axis_name: str) -> bool:
  """Whether the noise scale's split into halves applies (module doc): a device axis of one
  device (read while tracing) and no micro-batches (``micro_batch_size`` None or ``>= batch``)."""
  return num_micro_batches(batch, micro_batch_size) == 1 and lax.axis_size(axis_name) == 1


def scan_step(parts: StepParts, micro_batch_size: int | None, *, halves: bool = False,
              axis_name: str | None = None) -> Callable:
  """The per-device ``(state, batch) -> (state, metrics)`` with in-step accumulation.

  With ``halves`` (``config.log_noise_scale``), on a device axis ``axis_name`` of one device
  and without micro-batches, the batch runs as two unrolled micro-batches of ``b/2`` (module
  doc); otherwise ``halves`` changes nothing.
  """
  if halves and axis_name is None:
    raise ValueError("halves needs the device axis_name")

  def train_step(state, batch):
    micro, unroll = micro_batch_size, False
    if halves and halves_apply(_batch_size(batch), micro_batch_size, axis_name):
      micro, unroll = _batch_size(batch) // 2, True
    terms = accumulate(lambda b: parts.terms(state, b), micro, unroll=unroll)(batch)
    return parts.apply(state, terms)

  return train_step


def host_step(parts: StepParts, micro_batch_size: int | None, *, mesh: jax.sharding.Mesh,
              halves: bool = False) -> Callable:
  """A host-level train step ``(state, batch) -> (state, metrics)`` made of SPMD pieces.

  ``state`` is replicated over ``mesh`` and ``batch`` sharded over its ``"batch"`` axis
  (`lbjax.mesh`), as for the one-program step. The host loops over the ``n`` micro-batches:
  each micro-step (``jit(shard_map(...))``) slices its rows of every device's shard, computes
  ``parts.terms`` and adds them into a sum kept on device (donated, updated in place); one
  ``parts.apply`` of the mean then takes the optimizer update (``state`` is donated). Dispatch
  is asynchronous, so the loop does not wait for the device. A batch that needs no
  micro-batches runs as one :func:`scan_step` program (with ``halves``, see there).
  """
  axis_name = mesh_lib.AXIS
  rep, rows = mesh_lib.P(), mesh_lib.P(axis_name)
  launch = functools.partial(mesh_lib.data_parallel, mesh=mesh)

  def like(state, batch, size):  # shapes and dtypes of one micro-batch's terms
    return jax.eval_shape(lambda s, b: parts.terms(s, micro_batch(b, 0, size)), state, batch)

  # Each device's sums stay its own until `apply`'s pmean: per device a leading axis of 1,
  # globally [devices, ...] sharded over the device axis.
  own = lambda tree: jax.tree.map(lambda x: x[None], tree)
  mine = lambda tree: jax.tree.map(lambda x: x[0], tree)
  p_zeros = launch(lambda state, batch, size: own(zeros_like_sum(like(state, batch, size))),
                   in_specs=(rep, rows), out_specs=rows, static_argnums=(2,))
  p_add = launch(lambda total, state, batch, k, size: own(add(
      mine(total), parts.terms(state, micro_batch(batch, k, size)))),
                 in_specs=(rows, rep, rows, rep), out_specs=rows, donate_argnums=(0,),
                 static_argnums=(4,))
  p_apply = launch(lambda state, total, batch, size, n: parts.apply(
      state, mean_of_sum(mine(total), n, like(state, batch, size))),
                   in_specs=(rep, rows, rows), out_specs=rep, donate_argnums=(0,),
                   static_argnums=(3, 4))
  p_full = launch(scan_step(parts, None, halves=halves, axis_name=axis_name),
                  in_specs=(rep, rows), out_specs=rep, donate_argnums=(0,))
  indices: dict[int, jax.Array] = {}

  def index(k: int) -> jax.Array:
    if k not in indices:  # the micro-batch index, replicated once and reused every step
      indices[k] = mesh_lib.put_replicated(np.int32(k), mesh)
    return indices[k]

  def train_step(state, batch):
    per_device = jax.tree.leaves(batch)[0].shape[0] // mesh.shape[axis_name]
    n = num_micro_batches(per_device, micro_batch_size)
    if n == 1:
      return p_full(state, batch)
    total = p_zeros(state, batch, micro_batch_size)
    for k in range(n):
      total = p_add(total, state, batch, index(k), micro_batch_size)
    return p_apply(state, total, batch, micro_batch_size, n)

  return train_step


def launch_train_step(parts: StepParts, micro_batch_size: int | None, mode: str = "auto", *,
                      mesh: jax.sharding.Mesh, halves: bool = False) -> Callable:
  """The host-level train step on ``mesh`` for ``config.accumulation`` ``mode``.

  Without accumulation, or with ``"scan"``, it is ``jit(shard_map(scan_step(...)))`` over
  ``mesh`` with the state replicated (``P()``, donated) and the batch sharded over
  ``"batch"``; with ``"host"``, :func:`host_step`. ``halves``: the noise scale's split
  (:func:`scan_step`).
  """
  if micro_batch_size is not None and resolve_mode(mode) == "host":
    return host_step(parts, micro_batch_size, mesh=mesh, halves=halves)
  return mesh_lib.data_parallel(
      scan_step(parts, micro_batch_size, halves=halves, axis_name=mesh_lib.AXIS), mesh,
      in_specs=(mesh_lib.P(), mesh_lib.P(mesh_lib.AXIS)), out_specs=mesh_lib.P(),
      donate_argnums=(0,))


def validate_config(config: ml_collections.ConfigDict, *, device_count: int) -> None:
  """Checks ``config.micro_batch_size`` and ``config.accumulation`` (absent: nothing to check).

  ``micro_batch_size`` must be None or a positive divisor of the per-device batch
  ``batch_size / device_count``; a mixing augmentation (CutMix) needs whole groups per
  micro-batch. ``config.model.ghost_batch_size`` is checked against the micro-batch by
  ``lbjax.config_lib`` (:func:`forward_batch`).
  """
  if config.get("accumulation") is not None:
    check_choice("config.accumulation", config.accumulation, MODES)
  micro = config.get("micro_batch_size")
  if micro is None:
    return
  per_device = config.batch_size // device_count
  if isinstance(micro, bool) or not isinstance(micro, int) or micro <= 0 or per_device % micro:
    raise ConfigError("config.micro_batch_size",
                      f"must be None or a positive divisor of the per-device batch {per_device} "
                      f"(batch_size {config.batch_size} over {device_count} devices), "
                      f"got {micro!r}")
  bad = augment.straddling(config.augment, micro)
  if bad is not None:
    token, group = bad
    raise ConfigError("config.micro_batch_size",
                      f"augment token {token!r} mixes examples within groups of {group} rows, "
                      f"which must not straddle micro-batches; got {micro}")


def forward_batch(config: ml_collections.ConfigDict, device_count: int) -> tuple[int, str]:
  """Examples in one training forward pass per device, and how that number arises."""
  per_device = config.batch_size // device_count
  micro = config.get("micro_batch_size")
  if micro is not None and micro < per_device:
    return micro, f"micro-batch {micro} (config.micro_batch_size)"
  if config.get("log_noise_scale") and device_count == 1:
    return per_device // 2, (f"half batch {per_device // 2} (config.log_noise_scale on one "
                             "device splits the batch in two halves)")
  return per_device, (f"per-device batch {per_device} (batch_size {config.batch_size} over "
                      f"{device_count} devices)")
