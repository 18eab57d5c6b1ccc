r"""Step time with the gradient noise scale logged over the same step without it.

``config.log_noise_scale`` (McCandlish et al. 2018 App. A.1, ``lbjax/noise_scale.py``) adds to
the train step one squared norm per piece (a device's batch or micro-batch) and one of the
averaged gradient, and one more scalar to the ``pmean``. The issue's bar: at most 5% of a step.
Two settings, where the pieces exist already and the training is unchanged:

* ``4 devices``: the per-device batch is the small batch (run with 4 simulated CPU devices,
  ``XLA_FLAGS=--xla_force_host_platform_device_count=4``; on fewer devices this pair is skipped);
* ``1 device, micro-batches``: ``config.micro_batch_size = batch / 4`` (``config.accumulation``
  auto: host-side accumulation on CPU, an in-step scan elsewhere).

With ``--halves`` a third pair is timed, informational: one device without micro-batches, where
logging splits the batch into two halves (a different program, Ghost-BN-like BatchNorm), so its
ratio is not the metrics' cost. Every case is built in one process; each pair (off, on) is timed
in its own interleaved rounds (``benchmarks/common.py``); medians.

Last line: ``ratio: X`` = the larger of the two paired step-time ratios (on / off).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/noise_scale_overhead.py \
        [--model=resnet18] [--image_size=8] [--batch_size=32] [--rounds=10] [--steps=2] [--halves]
"""

import common  # pylint: disable=g-bad-import-order  (puts the repository on sys.path)
import jax  # pylint: disable=wrong-import-order

from lbjax import step as step_lib  # pylint: disable=wrong-import-order


def _config(args, log: bool, **overrides):
  c = common.optimizer_config(args, "sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
  c.log_noise_scale = log
  c.update(overrides)
  return c


def main(argv=None):
  parser = common.model_parser(__doc__.split("\n")[0], model="resnet18", image_size=8,
                               batch_size=32, rounds=10, steps=2)
  parser.add_argument("--halves", action="store_true",
                      help="also time one device without micro-batches (the halves)")
  args = parser.parse_args(argv)
  micro = args.batch_size // 4
  settings = {}
  if len(jax.local_devices()) >= 4:
    settings["4 devices"] = ({}, jax.local_devices()[:4])
  settings[f"1 device, micro-batches of {micro}"] = ({"micro_batch_size": micro},
                                                     jax.local_devices()[:1])
  if args.halves:
    settings["1 device, halves"] = ({}, jax.local_devices()[:1])
  pairs = {}
  for name, (overrides, devices) in settings.items():
    pairs[name] = [common.train_case(f"{name}: {'on' if log else 'off'}",
                                     step_lib.build(_config(args, log, **overrides)), devices)
                   for log in (False, True)]
  # Each pair is timed on its own (off, on, on, off, ...): interleaving the 4-device and the
  # 1-device pairs together put a 1-device case right after a 4-device one in every other round,
  # which measured a 1.07-1.08 "overhead" for micro-batches that was 1.005 with its pair alone.
  for pair in pairs.values():
    common.interleave(pair, args.rounds, args.steps)

  print(common.machine_line())
  print(f"{args.model} on digits {args.image_size}x{args.image_size}, global batch "
        f"{args.batch_size}, {args.rounds} interleaved rounds x {args.steps} steps; ratio = "
        "step time with config.log_noise_scale / without (paired median)")
  rows = []
  for off, on in pairs.values():
    rows += common.case_rows([off, on], off)
  common.print_table(common.CASE_HEADER, rows)
  print(common.memory_line())
  ratios = {name: common.paired_ratio(on, off) for name, (off, on) in pairs.items()}
  print("overhead: " + ", ".join(f"{name} {r:.3f}x" for name, r in ratios.items()))
  common.print_ratio(max(r for name, r in ratios.items() if name != "1 device, halves"))


if __name__ == "__main__":
  main()
