"""Deterministic global example stream, host shards, device reshape, eval batches.

Training data is an endless stream of example indices made of one seeded permutation per epoch:
stream position ``i`` is example ``perm_e[i % N]`` with ``e = i // N`` and
``perm_e = np.random.default_rng([seed, e]).permutation(N)``. Global batch ``k`` is positions
``[k*B, (k+1)*B)``, so

* the batch at any step is a pure function of ``(seed, step)``: resuming from a checkpoint needs
  no iterator state;
* a batch larger than the dataset is well defined (it spans several epochs);
* host ``p`` of ``P`` takes rows ``[p*B/P, (p+1)*B/P)`` of the global batch and reshapes them
  to ``[local_devices, B/(P*D), ...]``; together the hosts see exactly the 1-host batch.

Every example carries ``"position"``, its row in the global batch, from which the train step
derives its augmentation key, so results do not depend on how the batch is split.
"""

from collections.abc import Iterator
import functools

import numpy as np

from lbjax.errors import ConfigError

Batch = dict[str, np.ndarray]


@functools.lru_cache(maxsize=16)
def _permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  perm.setflags(write=False)  # Cached and shared.
  return perm


def _stream(start: int, count: int, num_examples: int, seed: int) -> np.ndarray:
  """Example indices at stream positions ``[start, start + count)``; int64 [count]."""
  if num_examples <= 0:
    raise ValueError("cannot draw batches from an empty split")
  out = np.empty(count, np.int64)
  filled = 0
  while filled < count:  # One contiguous slice of one epoch's permutation per iteration.
    epoch, offset = divmod(start + filled, num_examples)
    take = min(num_examples - offset, count - filled)
    out[filled:filled + take] = _permutation(seed, epoch, num_examples)[offset:offset + take]
    filled += take
  return out


def global_batch_indices(step: int, batch_size: int, num_examples: int, seed: int
                         ) -> np.ndarray:
  """Example indices of global batch ``step``: stream positions ``[step*B, (step+1)*B)``."""
  return _stream(int(step) * batch_size, batch_size, num_examples, seed)


def _host_rows(batch_size: int, process_index: int, process_count: int,
               local_device_count: int, key: str) -> tuple[int, int]:
  """First global row of this host and rows per host; checks divisibility."""
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
      or batch_size <= 0:
    raise ConfigError(key, f"must be a positive integer, got {batch_size!r}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  devices = process_count * local_device_count
  if batch_size % devices:
    raise ConfigError(
        key, f"{batch_size} is not divisible by the {devices} devices ({process_count} "
        f"process(es) x {local_device_count} local devices); use a multiple of {devices}")
  per_host = batch_size // process_count
  return process_index * per_host, per_host


def _device_batch(split: Batch, indices: np.ndarray, rows: np.ndarray,
                  local_device_count: int) -> Batch:
  """Gathers ``indices`` of ``split`` and reshapes every array to ``[D, b, ...]``."""
  batch = {
      "image": split["image"][indices],
      "label": split["label"][indices].astype(np.int32, copy=False),
      "position": rows.astype(np.int32),
  }
  return {k: v.reshape(local_device_count, -1, *v.shape[1:]) for k, v in batch.items()}


def train_batch(split: Batch, step: int, *, batch_size: int, seed: int, process_index: int = 0,
                process_count: int = 1, local_device_count: int = 1) -> Batch:
  """This host's part of global train batch ``step``.

  Args:
    split: ``{"image": uint8 [N, H, W, C], "label": int [N]}``.
    step: global optimizer step.
    batch_size: global batch size ``B`` over all hosts and devices (``config.batch_size``).
    seed: seeds the per-epoch permutations.
    process_index: this host ``p``.
    process_count: number of hosts ``P``.
    local_device_count: devices ``D`` on this host.

  Returns:
    ``image`` uint8 [D, b, H, W, C], ``label`` int32 [D, b] and ``position`` int32 [D, b] (row in
    the global batch, ``0..B-1``), with ``b = B / (P*D)``; rows ``[p*B/P, (p+1)*B/P)``.

  Raises:
    ConfigError: ``config.batch_size`` not divisible by the total device count ``P*D``.
  """
  start, per_host = _host_rows(batch_size, process_index, process_count, local_device_count,
                               "config.batch_size")
  indices = _stream(int(step) * batch_size + start, per_host, len(split["label"]), seed)
  return _device_batch(split, indices, np.arange(start, start + per_host), local_device_count)


def num_eval_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)


def eval_batches(split: Batch, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1, local_device_count: int = 1) -> Iterator[Batch]:
  """Every example of ``split`` exactly once, in order, in global batches of ``batch_size``.

  The last global batch is padded (zero images, label 0, ``mask`` 0); every host yields the
  same number of batches, so collectives in the eval step line up. Batches are shaped like
  `train_batch` plus ``mask`` float32 [D, b] (1 real, 0 padding).

  Raises:
    ConfigError: ``config.eval_batch_size`` not divisible by the total device count.
  """
  start, per_host = _host_rows(batch_size, process_index, process_count, local_device_count,
                               "config.eval_batch_size")
  num_examples = len(split["label"])
  rows = np.arange(start, start + per_host)
  for k in range(num_eval_batches(num_examples, batch_size)):
    positions = k * batch_size + rows
    real = positions < num_examples
    batch = _device_batch(split, np.where(real, positions, 0), rows, local_device_count)
    real = real.reshape(batch["label"].shape)
    batch["image"][~real] = 0
    batch["label"][~real] = 0
    batch["mask"] = real.astype(np.float32)
    yield batch
