r"""SWAP phase 2: the K replicas' step, ``vmap`` and ``loop``, against K normal one-replica steps.

All sides run the real code on one device, each step reading its batches as the run does:

* ``vmap``: `lbjax.swap.Replicas` with ``execution="vmap"`` (one compiled step over the replica
  axis, `jax.vmap` inside `jax.shard_map`);
* ``loop``: `lbjax.swap.Replicas` with ``execution="loop"`` (the one compiled one-replica step,
  dispatched once per replica);
* reference: K steps of the normal run of ``phase2_config(config, 0)``
  (``Experiment.train_program`` on ``Experiment.put_train_batch``, each replica's state replicated
  on the device's mesh), what running the replicas as K separate normal runs would cost per step.

Timing interleaves the three in rounds in one process (timing noise between processes is
±20–40% on the shared CPUs) and reports medians; a side's ratio is the median over rounds of its
time / the reference's time in the same round. The last line is ``ratio: X`` for
``config.swap.execution="auto"`` on this backend (`lbjax.swap.AUTO`); the goal is X <= 1.05
(SWAP costs no more than its replicas run separately).

    python benchmarks/swap_replicas.py [--replicas=4] [--batch_size=32] [--model=resnet_tiny]
        [--image_size=16] [--rounds=5] [--steps=10]

Vmapping a convolution over per-replica kernels makes it one grouped convolution (feature groups
= K). On GPUs that is one cuDNN call over K small batches; XLA:CPU runs grouped convolutions
slower than the K separate ones, which is why ``auto`` takes ``loop`` on CPU.
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common
import jax

from configs import swap_digits
from lbjax import mesh as mesh_lib
from lbjax import step as step_lib
from lbjax import swap


class Reference:
  """K normal one-replica runs of ``exp``'s step, one after another, from ``states``."""

  def __init__(self, exp, states, devices):
    self.exp, self.mesh = exp, mesh_lib.data_mesh(devices)
    self.program = exp.train_program(self.mesh)
    self.seeds = [int(s) for s in states.seed]
    self.states = [mesh_lib.put_replicated(jax.tree.map(lambda x, k=k: x[k], states), self.mesh)
                   for k in range(len(self.seeds))]

  def step(self, s):
    for k, seed in enumerate(self.seeds):
      self.states[k], _ = self.program(self.states[k],
                                       self.exp.put_train_batch(s, self.mesh, seed=seed))


def _timed(side, start, steps):
  """Seconds per step of ``side.step`` over ``steps`` steps from step ``start``."""
  jax.block_until_ready(side.states)
  begin = time.perf_counter()
  for s in range(start, start + steps):
    side.step(s)
  jax.block_until_ready(side.states)
  return (time.perf_counter() - begin) / steps


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

  data = step_lib.load_data(config)
  exp = step_lib.build(swap.phase2_config(config), data)
  states = swap.init_replicas(config, data, jax.device_get(exp.init_state()))
  sides = {"vmap": swap.Replicas(exp, states, "vmap", device),
           "loop": swap.Replicas(exp, states, "loop", device),
           "reference": Reference(exp, states, device)}
  for side in sides.values():
    _timed(side, 0, 2)  # compile and warm up
  times = {name: [] for name in sides}
  start = 2
  for r in range(args.rounds):
    order = list(sides) if r % 2 == 0 else list(reversed(sides))
    for name in order:
      times[name].append(_timed(sides[name], start, args.steps))
    start += args.steps
  median = {name: statistics.median(t) for name, t in times.items()}
  # Each side against the reference timed next to it in the same round, median over rounds:
  # drift in the machine's load hits both alike (benchmarks/common.py).
  paired = {name: statistics.median(t / r for t, r in zip(times[name], times["reference"]))
            for name in ("vmap", "loop")}
  auto = swap.resolve_execution("auto")
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); model "
        f"{args.model} at {args.image_size}x{args.image_size}, {k} replicas x batch "
        f"{args.batch_size}, {args.rounds} rounds x {args.steps} steps")
  for name in ("vmap", "loop"):
    print(f"{name} step ({k} replicas): {median[name] * 1e3:.2f} ms = "
          f"{paired[name]:.3f} x reference  (rounds: "
          f"{', '.join(f'{t * 1e3:.1f}' for t in times[name])})")
  print(f"reference ({k} x one replica's normal step): {median['reference'] * 1e3:.2f} ms  "
        f"(rounds: {', '.join(f'{t * 1e3:.1f}' for t in times['reference'])})")
  print(f"auto = {auto} on {jax.default_backend()}")
  print(common.machine_line())
  print(common.memory_line())
  print(f"ratio: {paired[auto]:.3f}")


if __name__ == "__main__":
  main()
