r"""Images/s per device of the data-parallel train step on 1, 2 and 4 simulated CPU devices.

The per-device batch is fixed (``--per_device_batch``), so the global batch grows with the device
count, as in weak scaling. A process's device count is fixed when JAX starts
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``), so each count runs in its own worker
process; the workers build the same ``lbjax.step.build(config)`` step (state donated, batch on
the devices), compile, and then wait. The parent interleaves timed rounds across the workers
(1, 2, 4, then 4, 2, 1, ...), one worker running at a time, so load drift on the shared machine
falls on every count alike; medians.

**Simulated devices prove correctness, not speed-up.** The N "devices" are N XLA:CPU clients
sharing this machine's cores: N devices each doing the work of one can at best keep per-device
throughput when there are N idle cores, and on 2 cores the 4-device figure can at best halve.
The figures show that the data-parallel step (``Experiment.train_program``, ``jit(shard_map)``
over the devices' mesh), its ``pmean`` and the BatchNorm statistics run on 1, 2 and 4 devices
(``tests/test_train.py`` checks they give the same result); a real speed-up needs real
accelerators (see BENCHMARKS.md, GPU section).

Last line: ``ratio: X`` = images/s per device on 4 devices / images/s per device on 1 device
(ideal scaling on real devices: 1.0).

    python benchmarks/scaling.py [--devices=1,2,4] [--model=lenet5] [--image_size=32]
        [--per_device_batch=32] [--rounds=5] [--steps=5] [--backend=cpu]

With ``--backend=cuda`` the workers use the first 1, 2, 4 GPUs (``CUDA_VISIBLE_DEVICES``)
instead: a real weak-scaling measurement.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(args):
  """Builds and compiles the step on all local devices, then answers ``run STEPS`` lines on
  stdin with seconds per step on stdout (one JSON object per line)."""
  import common  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS is set)
  import jax  # pylint: disable=g-import-not-at-top

  from lbjax import step as step_lib  # pylint: disable=g-import-not-at-top

  n = jax.local_device_count()
  args.batch_size = args.per_device_batch * n
  config = common.optimizer_config(args, "sgd", learning_rate=0.05, momentum=0.9,
                                   weight_decay=5e-4)
  case = common.train_case(f"{n} devices", step_lib.build(config))
  case.warm_up()
  print(json.dumps({"devices": n, "compile_s": case.compile_s, "xla_mib": case.xla_mib,
                    "state_mib": case.state_mib}), flush=True)
  for line in sys.stdin:
    steps = int(line.split()[1])
    print(json.dumps({"seconds": case.run(steps), "peak_rss_mib": common.peak_rss_mib()}),
          flush=True)


class Worker:
  """A worker process with ``n`` simulated devices."""

  def __init__(self, n: int, argv, backend: str = "cpu"):
    if backend == "cpu":  # n simulated devices
      env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                 CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    else:  # the first n real accelerators
      env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, range(n))),
                 JAX_PLATFORMS=backend)
    self.n = n
    self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", *argv],
                                 env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
    self.info = self._read()
    self.times = []
    self.peak_rss_mib = float("nan")

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"worker with {self.n} devices exited ({self.proc.wait()})")
    return json.loads(line)

  def run(self, steps: int):
    self.proc.stdin.write(f"run {steps}\n")
    self.proc.stdin.flush()
    out = self._read()
    self.times.append(out["seconds"])
    self.peak_rss_mib = out["peak_rss_mib"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--devices", default="1,2,4")
  parser.add_argument("--backend", default="cpu",
                      help="cpu: simulated devices; cuda: the first N GPUs (a real scaling test)")
  parser.add_argument("--model", default="lenet5")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--per_device_batch", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=5, help="steps per round and device count")
  args = parser.parse_args(argv)
  if args.worker:
    return worker(args)

  sys.path.insert(0, HERE)
  import common  # pylint: disable=g-import-not-at-top

  counts = [int(n) for n in args.devices.split(",")]
  worker_argv = [f"--{name}={getattr(args, name)}" for name in (
      "model", "image_size", "per_device_batch", "rounds", "steps")]
  workers = [Worker(n, worker_argv, args.backend) for n in counts]  # compiled in turn
  try:
    for r in range(args.rounds):
      for w in (workers if r % 2 == 0 else workers[::-1]):
        w.run(args.steps)
  finally:
    for w in workers:
      w.close()

  kind = "simulated CPU" if args.backend == "cpu" else args.backend
  print(common.machine_line(f"workers with {args.devices} {kind} devices"))
  print(f"{args.model} on digits {args.image_size}x{args.image_size}, {args.per_device_batch} "
        f"images per device per step, SGD; {args.rounds} rounds x {args.steps} steps interleaved "
        f"across the worker processes.")
  if args.backend == "cpu":
    print("Simulated devices share the CPU cores: these figures prove the data-parallel step runs "
          "on 1, 2 and 4 devices, not that it speeds up.")
  rows, per_device = [], {}
  for w in workers:
    step = statistics.median(w.times)
    per_device[w.n] = args.per_device_batch / step
    rows.append([w.n, w.n * args.per_device_batch, 1e3 * step,
                 f"{1e3 * min(w.times):,.1f}–{1e3 * max(w.times):,.1f}",
                 w.n * per_device[w.n], per_device[w.n], w.info["state_mib"], w.info["xla_mib"],
                 w.peak_rss_mib, w.info["compile_s"], per_device[w.n] / per_device[counts[0]]])
  common.print_table(("devices", "global batch", "step ms (median)", "min–max ms", "images/s",
                      "images/s per device", "state MiB", "XLA MiB / device", "peak RSS MiB",
                      "compile s", f"per-device vs {counts[0]}"), rows)
  common.print_ratio(per_device[counts[-1]] / per_device[counts[0]])


if __name__ == "__main__":
  main()
