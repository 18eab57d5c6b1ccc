r"""SWAP phase 2: one step of K vmapped replicas against K steps of one replica.

Both sides run the real code on one device with the batches already on it:

* vmapped: `lbjax.swap.make_replicas_step` (one ``jax.vmap`` over K replicas, each with its own
  seed and batch), pmapped over one device as `lbjax.swap.train_replicas` runs it;
* one replica: the normal train step of that replica's config (`lbjax.train.build`), pmapped over
  one device — what running the replicas one after another would cost, per step.

Timing interleaves the two in rounds in one process (timing noise between processes is ±20–40%
on the shared CPUs) and reports medians. The last line is ``ratio: X`` = vmapped step time /
(K × one replica's step time); the goal is X <= 0.8 (vmapping small batches uses the device
better than running them one by one).

    python benchmarks/swap_replicas.py [--replicas=4] [--batch_size=32] [--model=resnet_tiny]
        [--image_size=16] [--rounds=5] [--steps=10]

Vmapping a convolution over per-replica kernels makes it one grouped convolution (feature groups
= K). On GPUs that is one cuDNN call over K small batches; XLA:CPU runs grouped convolutions
slower than the K separate ones (measured in the report of this benchmark).
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from configs import swap_digits  # pylint: disable=wrong-import-position
from lbjax import swap  # pylint: disable=wrong-import-position
from lbjax import train  # pylint: disable=wrong-import-position

import common  # pylint: disable=g-bad-import-order,wrong-import-position


def _timed(fn, state, batch, steps):
  """Runs ``steps`` donated steps; returns (seconds per step, final state)."""
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = fn(state, batch)
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps, state


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--replicas", type=int, default=4)
  parser.add_argument("--batch_size", type=int, default=32, help="per replica")
  parser.add_argument("--model", default="resnet_tiny")
  parser.add_argument("--image_size", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=10, help="steps per round and side")
  args = parser.parse_args(argv)

  config = swap_digits.get_config()
  config.image_size = args.image_size
  config.model.name = args.model
  config.swap.num_replicas = args.replicas
  config.swap.batch_size = args.batch_size
  device = jax.devices()[:1]
  k = args.replicas

  exp = train.build(swap.phase2_config(config))
  replicas = swap.init_replicas(exp, exp.init_state(), k)
  seeds = [swap.replica_seed(config, i) for i in range(k)]
  sharding = jax.NamedSharding(jax.sharding.Mesh(np.array(device), ("d",)), jax.P("d"))

  # K replicas, one vmap: states [1, K, 1, ...], batches [1, K, 1, b, ...] on the device.
  p_vmapped = jax.pmap(swap.make_replicas_step(exp), axis_name=swap.REPLICA_AXIS,
                       devices=device, donate_argnums=(1,))
  seeds_d = jax.device_put(np.asarray(seeds, np.int32)[None], sharding)
  v_state = jax.device_put(jax.tree.map(lambda x: x[None, :, None], replicas), sharding)
  v_batch = jax.device_put(jax.tree.map(lambda x: x[None], swap.replica_batch(
      exp.data.train, 0, seeds, args.batch_size)), sharding)
  vmapped = lambda state, batch: p_vmapped(seeds_d, state, batch)

  # One replica: the normal one-device train step of replica 0's config.
  exp0 = train.build(swap.phase2_config(config, 0), exp.data)
  single = jax.pmap(exp0.train_step, axis_name=train.AXIS, devices=device, donate_argnums=(0,))
  s_state = flax.jax_utils.replicate(jax.tree.map(lambda x: x[0], replicas), device)
  s_batch = jax.device_put(exp0.train_batch(0, local_device_count=1), sharding)

  _, v_state = _timed(vmapped, v_state, v_batch, 2)  # compile and warm up
  _, s_state = _timed(single, s_state, s_batch, 2)
  v_times, s_times = [], []
  for _ in range(args.rounds):
    t, v_state = _timed(vmapped, v_state, v_batch, args.steps)
    v_times.append(t)
    t, s_state = _timed(single, s_state, s_batch, args.steps)
    s_times.append(t)
  v, s = statistics.median(v_times), statistics.median(s_times)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); model "
        f"{args.model} at {args.image_size}x{args.image_size}, {k} replicas x batch "
        f"{args.batch_size}, {args.rounds} rounds x {args.steps} steps")
  print(f"vmapped step ({k} replicas): {v * 1e3:.2f} ms  (rounds: "
        f"{', '.join(f'{t * 1e3:.1f}' for t in v_times)})")
  print(f"one replica's step: {s * 1e3:.2f} ms  (rounds: "
        f"{', '.join(f'{t * 1e3:.1f}' for t in s_times)}); x {k} = {k * s * 1e3:.2f} ms")
  print(common.machine_line())
  print(common.memory_line())
  print(f"ratio: {v / (k * s):.3f}")


if __name__ == "__main__":
  main()
