"""Device meshes of every layout, and how host data becomes global arrays on them.

lbjax keeps pmap's model of data parallelism — a per-device program with the named axis
`AXIS` (``"batch"``) whose gradients and statistics are averaged with ``lax.pmean`` — and
launches it the way the pinned JAX asks new code to: ``jax.jit(jax.shard_map(f, mesh=...,
in_specs=..., out_specs=...))`` over a `jax.sharding.Mesh` (`data_parallel`). This module owns
the meshes and the shardings that go with them:

* a normal run: a 1-D mesh ``("batch",)`` over every device of every process (`data_mesh`);
* SWAP's phase 2: a 2-D mesh ``("replica", "batch")`` (`replica_mesh`): with K replicas on D
  devices, K >= D gives shape ``(D, 1)`` (K/D replicas vmapped on each device) and K < D gives
  ``(K, D/K)`` (each replica data-parallel over its own group of D/K devices).

The train state is one global ``jax.Array`` tree replicated over the mesh (``P()``,
`put_replicated`); a batch is sharded over ``"batch"``. Each process holds its own rows of the
global batch (`lbjax.data.pipeline` gives host ``p`` rows ``[p·B/P, (p+1)·B/P)`` as
``[local_devices, b, ...]``); `put_batch` makes the global ``[B, ...]`` array of them with
``jax.make_array_from_process_local_data``, so device ``i`` of the mesh holds rows
``[i·b, (i+1)·b)``, the rows the per-device map (pmap) gave it. A replicated result comes back
to the host with `to_host` (each process reads its own copy: no cross-process transfer).
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = "batch"
REPLICA_AXIS = "replica"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The 1-D ``("batch",)`` mesh over ``devices`` (default: every device of every process, in
  ``jax.devices()`` order: process by process, the order the hosts' rows are in)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.array(devices), (AXIS,))


def local_device_count(mesh: Mesh) -> int:
  """The devices of ``mesh`` that belong to this process."""
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def host_shard(mesh: Mesh) -> dict[str, int]:
  """Which rows of a global batch this process feeds to ``mesh``: ``process_index`` and
  ``process_count`` among the processes ``mesh`` spans, and ``local_device_count`` (the
  keyword arguments of `lbjax.data.pipeline.train_batch` and ``eval_batches``)."""
  processes = sorted({d.process_index for d in mesh.devices.flat})
  return {"process_index": processes.index(jax.process_index()),
          "process_count": len(processes), "local_device_count": local_device_count(mesh)}


def replica_shape(num_replicas: int, num_devices: int) -> tuple[int, int]:
  """``(replica, batch)`` extents of SWAP's mesh: ``(D, 1)`` for K >= D, ``(K, D/K)`` for K < D.

  Raises:
    ValueError: neither of K and D divides the other (the runner names the config key).
  """
  k, d = num_replicas, num_devices
  if k >= d and k % d == 0:
    return d, 1
  if k < d and d % k == 0:
    return k, d // k
  raise ValueError(f"{k} replicas cannot be laid out on {d} devices: use a multiple or a divisor "
                   f"of {d}")


def replica_mesh(num_replicas: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The 2-D ``("replica", "batch")`` mesh of SWAP's K replicas on ``devices`` (default: all)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = replica_shape(num_replicas, len(devices))
  return Mesh(np.array(devices).reshape(shape), (REPLICA_AXIS, AXIS))


def sharding(mesh: Mesh, *spec) -> NamedSharding:
  """``NamedSharding(mesh, P(*spec))``; no ``spec`` is replicated over the whole mesh."""
  return NamedSharding(mesh, P(*spec))


def _put(tree, target: NamedSharding):
  """Host ``tree`` (the same values on every process) → global arrays laid out as ``target``."""

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, target, lambda index: x[index])

  return jax.tree.map(one, tree)


def put_replicated(tree, mesh: Mesh):
  """Host ``tree`` → global arrays replicated over ``mesh`` (``P()``). Every process passes the
  same values (the state of a run is the same on every host)."""
  return _put(tree, sharding(mesh))


def put_sharded(tree, mesh: Mesh, *spec):
  """Host ``tree`` (whole arrays, the same on every process) → global arrays sharded as
  ``P(*spec)`` (SWAP's ``[K, ...]`` states over ``"replica"``)."""
  return _put(tree, sharding(mesh, *spec))


def put_batch(local_batch, mesh: Mesh, *, replica_axis: bool = False):
  """This process's rows → one global batch sharded over ``"batch"``.

  Args:
    local_batch: host arrays ``[local_devices, b, ...]`` (`lbjax.data.pipeline`), or with
      ``replica_axis`` ``[K, local_devices_per_replica, b, ...]`` (SWAP: every process holds
      all replicas' rows of its devices).
    mesh: the mesh of the program the batch is for.
    replica_axis: leaves have a leading replica axis, sharded over ``"replica"``.

  Returns:
    Global arrays ``[B, ...]`` sharded ``P("batch")`` (``[K, B, ...]``, ``P("replica",
    "batch")``), made with ``jax.make_array_from_process_local_data``.
  """
  if replica_axis:
    target = sharding(mesh, REPLICA_AXIS, AXIS)
    flat = lambda x: x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])
  else:
    target = sharding(mesh, AXIS)
    flat = lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(target, flat(np.asarray(x))), local_batch)


def put_batches(batches, mesh: Mesh, size: int = 2, **kwargs):
  """`put_batch` of each of ``batches``, ``size`` ahead of the consumer (the copies overlap the
  running step)."""
  queue = []
  for batch in batches:
    queue.append(put_batch(batch, mesh, **kwargs))
    if len(queue) >= max(size, 1):
      yield queue.pop(0)
  yield from queue


def to_host(tree):
  """Global arrays → host NumPy arrays on every process. A replicated array is read from this
  process's own copy; an array sharded over other hosts' devices too (SWAP's ``[K, ...]``
  states and metrics over ``"replica"``) is gathered from all processes (a collective: every
  process calls it at the same point)."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(one, tree)


def data_parallel(fn: Callable, mesh: Mesh, in_specs: Any, out_specs: Any, *,
                  donate_argnums: Sequence[int] = (), static_argnums: Sequence[int] = ()
                  ) -> Callable:
  """``jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=..., out_specs=...))``: the per-device
  program ``fn`` (with its ``lax.pmean``/``psum`` over the mesh's named axes) as one SPMD program.

  pmap's semantics, exactly: ``check_vma=False``. With JAX's replication checking on, the
  gradient of a replicated input (the weights, ``P()``) is summed over the devices by autodiff
  itself (the transpose of the implicit broadcast is a ``psum``), so a per-device step written
  for pmap — its own gradient, then ``lax.pmean`` — would apply D times the mean gradient. Off,
  each device differentiates its own loss and the step's ``pmean`` averages, as under the
  per-device map (pmap); an output declared replicated (``P()``) is taken from the devices,
  which the step's ``pmean``s make identical (tested against one device for every optimizer).

  ``static_argnums`` are passed to ``fn`` as Python values (closed over, not sharded); the
  other arguments follow ``in_specs`` (one spec per non-static argument).
  """
  static_argnums = tuple(static_argnums)
  if not static_argnums:
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                                 check_vma=False), donate_argnums=tuple(donate_argnums))

  def launched(*args):
    static = {i: args[i] for i in static_argnums}
    dynamic = [a for i, a in enumerate(args) if i not in static]

    def per_device(*dyn):
      it = iter(dyn)
      return fn(*[static[i] if i in static else next(it) for i in range(len(args))])

    return jax.shard_map(per_device, mesh=mesh, in_specs=tuple(in_specs), out_specs=out_specs,
                         check_vma=False)(*dynamic)

  return jax.jit(launched, static_argnums=static_argnums, donate_argnums=tuple(donate_argnums))
