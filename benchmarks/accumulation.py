r"""Images/s of one optimizer update: the whole batch at once vs accumulated micro-batches.

For each model, three train steps of the same global batch on one device, built by
``lbjax.step.build`` and run as ``train_and_evaluate`` runs them (``Experiment.train_program``
on the one device's mesh, state donated, batch already on the device), timed in interleaved
rounds in this one process (``benchmarks/common.py``):

* ``full``: one forward/backward pass over the whole batch;
* ``scan``: ``config.accumulation="scan"``, the micro-batches in a ``lax.scan`` inside the step;
* ``host``: ``config.accumulation="host"``, one compiled micro-step per micro-batch dispatched by
  the host, then one compiled update (``lbjax.accumulate.host_step``).

All three compute the same update (``tests/test_accumulation.py``). Defaults: LeNet-5 on digits at
32x32, batch 1024 in micro-batches of 128 (the setting of ``/work/shared/NOTES.md``), and
ResNet-18 (CIFAR stem) at 8x8, batch 256 in micro-batches of 32.

Last line: ``ratio: X`` = images/s of the accumulated step in the mode ``config.accumulation=
"auto"`` picks on this backend / images/s of the full-batch step, geometric mean over the models
(each model's figure is in its table).

    python benchmarks/accumulation.py [--models=lenet5:32:1024:128,resnet18:8:256:32]
        [--rounds=3] [--steps=1]
"""

import argparse
import math

import common  # pylint: disable=g-bad-import-order  (puts the repository on sys.path)
import jax  # pylint: disable=g-bad-import-order

from lbjax import accumulate
from lbjax import step as step_lib
from lbjax.data import datasets

MODES = ("scan", "host")


def parse_models(text: str) -> list[tuple[str, int, int, int]]:
  """``name:image_size:batch:micro,...`` → tuples."""
  out = []
  for item in text.split(","):
    name, image, batch, micro = item.split(":")
    out.append((name, int(image), int(batch), int(micro)))
  return out


def config_for(name: str, image_size: int, batch: int, micro):
  args = argparse.Namespace(model=name, image_size=image_size, batch_size=batch)
  c = common.optimizer_config(args, "sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
  c.micro_batch_size = micro
  return c


def bench_model(name, image_size, batch, micro, rounds, steps) -> dict[str, float]:
  """Times full / scan / host for one model; prints its table; returns images/s per case."""
  devices = jax.local_devices()[:1]
  data = datasets.load("digits", image_size=image_size)
  cases = [common.train_case("full", step_lib.build(config_for(name, image_size, batch, None),
                                                 data), devices)]
  for mode in MODES:
    config = config_for(name, image_size, batch, micro)
    config.accumulation = mode
    cases.append(common.train_case(f"{mode} ({batch // micro} x {micro})",
                                   step_lib.build(config, data), devices))
  common.interleave(cases, rounds, steps)
  print(f"\n{name} on digits {image_size}x{image_size}, batch {batch} on 1 device, "
        f"micro-batches of {micro}; {rounds} interleaved rounds x {steps} steps; "
        f"ratio = step time / full")
  common.print_table(common.CASE_HEADER, common.case_rows(cases, cases[0]))
  return {mode: case.images_per_sec for mode, case in zip(("full",) + MODES, cases)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="lenet5:32:1024:128,resnet18:8:256:32",
                      help="name:image_size:batch:micro_batch, comma-separated")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=1, help="steps per round and case")
  args = parser.parse_args()
  auto = accumulate.resolve_mode("auto")
  print(common.machine_line())
  ratios = []
  for name, image_size, batch, micro in parse_models(args.models):
    speed = bench_model(name, image_size, batch, micro, args.rounds, args.steps)
    ratios.append(speed[auto] / speed["full"])
    print(f"{name}: images/s full {speed['full']:,.0f}, scan {speed['scan']:,.0f}, host "
          f"{speed['host']:,.0f}; auto = {auto} on {jax.default_backend()}: "
          f"accumulated / full = {ratios[-1]:.3f}, host / scan = "
          f"{speed['host'] / speed['scan']:.3f}")
  print(common.memory_line())
  common.print_ratio(math.prod(ratios) ** (1 / len(ratios)))


if __name__ == "__main__":
  main()
