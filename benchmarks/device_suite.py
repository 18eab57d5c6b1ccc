r"""One command for a machine with an accelerator: what lbjax's train step does on this hardware.

    python benchmarks/device_suite.py            # GPU / TPU: ResNet-18, a few minutes
    python benchmarks/device_suite.py --smoke    # any CPU: tiny sizes, ~45 s of CPU (run by the tests)

Needs only this repository and its Python packages: the images are synthetic, CIFAR-shaped
(32x32x3 uint8, 10 classes, drawn once from a seeded NumPy generator), so nothing is downloaded.
Every measurement runs the real data-parallel train step of `lbjax.step.build`
(``Experiment.train_program``: ``jit(shard_map)`` over the devices' ``("batch",)`` mesh, state
replicated and donated; augmentation ``standard`` = crop+flip+normalize on device, SGD with
momentum 0.9 and weight decay unless said otherwise) on batches already on the devices, timed as
in ``benchmarks/common.py``: compile apart, then interleaved rounds of several steps, medians. It
measures

1. **throughput**: ResNet-18 images/s at global batch 256, 1024 and 4096 over all visible devices,
   ``config.model.dtype`` float32 against bfloat16; a batch whose step does not fit in device
   memory is retried with micro-batches (``config.micro_batch_size``, halved until it fits);
   ratio = bfloat16 / float32 images/s at the same batch (paired rounds);
2. **SWAP phase 2**: K replicas (default 4) of ResNet-18 at batch 128 each, one step of all of them
   with ``config.swap.execution`` ``vmap`` (one compiled program, `lbjax.swap.Replicas`) against
   ``loop`` (the one-replica step dispatched K times); ratio = vmap / loop step time;
3. **K-FAC**: ResNet-18 at batch 256, ``kfac`` (``configs/quickstart.py:kfac`` settings,
   statistics and inverses every step) against ``sgd``; ratio = K-FAC / SGD step time;
4. **pmap** (data-parallel scaling; the section keeps the name it had before the step moved to
   ``jit(shard_map)``): ResNet-18 at 256 images per device on the meshes of 1, 2, 4, ... and all
   visible devices; ratio = images/s per device / that on one device (1.0 = perfect scaling);

with, for each, the compiled step's XLA footprint per device (arguments + outputs − donated +
temporaries) and the device's ``peak_bytes_in_use`` after it compiled and ran (``memory_stats()``,
the highest of the local devices; cumulative over the process, so cases run smallest first; "n/a"
where the backend reports none, as XLA:CPU). It prints one Markdown table and, last,
``ratio: X`` = bfloat16 / float32 images/s at global batch 1024 (at the middle batch with
``--smoke``).

The float32 SGD step of section 1 is the same program as K-FAC's reference and as pmap's row on
all devices when the batch matches; it is reused there (one compile less), its timings restarted
so that every ratio pairs rounds of one section.

``--smoke`` runs the same code at tiny sizes (ResNet-tiny, batches 16/32/64, 2 replicas of 8,
8 images per device) so a CPU checks the suite end to end; its figures mean nothing for an
accelerator.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import common  # pylint: disable=g-bad-import-order,wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from configs import default  # pylint: disable=wrong-import-position
from configs import quickstart  # pylint: disable=wrong-import-position
from lbjax import step as step_lib  # pylint: disable=wrong-import-position
from lbjax import swap  # pylint: disable=wrong-import-position
from lbjax.data import datasets  # pylint: disable=wrong-import-position
from lbjax.optim import registry  # pylint: disable=wrong-import-position

# Sizes of the full run and of --smoke.
FULL = {"model": "resnet18", "batches": (256, 1024, 4096), "ratio_batch": 1024, "replicas": 4,
        "replica_batch": 128, "kfac_batch": 256, "per_device": 256, "examples": 2048,
        "rounds": 5, "steps": 5}
SMOKE = {"model": "lenet5", "batches": (16, 32, 64), "ratio_batch": 32, "replicas": 2,
         "replica_batch": 8, "kfac_batch": 16, "per_device": 8, "examples": 128,
         "rounds": 1, "steps": 1}
SMOKE_XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                   "--xla_cpu_use_fusion_emitters=false")
DTYPES = ("float32", "bfloat16")
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10

HEADER = ("measurement", "case", "devices", "global batch", "micro-batch", "step ms", "images/s",
          "ratio", "XLA MiB / device", "device peak MiB", "compile s")


def synthetic_data(num_examples: int, seed: int = 0) -> datasets.Dataset:
  """CIFAR-shaped random data: uint8 [N, 32, 32, 3] images, labels in [0, 10), train = test."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_examples, *IMAGE_SHAPE), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, num_examples).astype(np.int32)
  split = {"image": images, "label": labels}
  pixels = images.reshape(-1, IMAGE_SHAPE[-1]) / 255.0
  return datasets.Dataset(train=split, test=split, validation=None, num_classes=NUM_CLASSES,
                          mean=pixels.mean(0).astype(np.float32),
                          std=pixels.std(0).astype(np.float32))


def make_config(model: str, batch_size: int, dtype: str = "float32", optimizer: str = "sgd",
                micro_batch_size=None):
  """``configs/default.py`` with ``model`` on CIFAR-shaped images, a constant learning rate and
  ``optimizer`` with its ``configs/quickstart.py`` settings."""
  c = default.get_config()
  c.model.name = model
  c.model.dtype = dtype
  c.augment = "standard"
  c.batch_size = batch_size
  c.micro_batch_size = micro_batch_size
  c.optimizer = registry.config_block(optimizer, **quickstart.OPTIMIZERS[optimizer])
  c.schedule.name = "constant"
  c.progress_bar = False
  return c


def device_peak_mib():
  """The highest ``peak_bytes_in_use`` of the local devices, MiB; None where not reported."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) / common.MIB if peaks else None


def _is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


class Measured:
  """A :class:`common.Case` warmed up (compiled, one step), with its compile time and the device
  peak after that first step."""

  def __init__(self, case: common.Case, micro_batch_size=None):
    self.case, self.micro_batch_size = case, micro_batch_size
    case.warm_up()
    self.compile_s = case.compile_s
    self.peak_mib = device_peak_mib()


class InitialStates:
  """One initial train state per model, reused with each experiment's fresh optimizer state:
  the parameters do not depend on the dtype, batch or optimizer, and ``model.init`` runs op by
  op (slow on CPU)."""

  def __init__(self):
    self._states = {}

  def __call__(self, exp):
    name = exp.config.model.name
    if name not in self._states:
      self._states[name] = jax.device_get(exp.init_state())
    state = self._states[name]
    return state.replace(opt_state=exp.tx.init(state.params))


initial_state = InitialStates()


def measure_train(name: str, config, data, devices) -> Measured:
  """The train step of ``config`` on ``devices``' mesh; on out-of-memory, retried with
  micro-batches of half the per-device (micro-)batch until it fits."""
  per_device = config.batch_size // len(devices)
  micro = config.micro_batch_size
  while True:
    config.micro_batch_size = micro
    try:
      exp = step_lib.build(config, data)
      return Measured(common.train_case(name, exp, devices, initial_state(exp)), micro)
    except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError has no stable home)
      if not _is_out_of_memory(e) or (micro or per_device) <= 1:
        raise
      micro = (micro or per_device) // 2
      print(f"{name}: out of device memory; retrying with micro-batches of {micro}", flush=True)


def measure_swap(name: str, config, data, execution: str, devices) -> Measured:
  """One step of all of phase 2's replicas with ``execution`` (`lbjax.swap.Replicas`)."""
  exp = step_lib.build(swap.phase2_config(config, 0), data)
  states = swap.init_replicas(config, data, initial_state(exp))
  replicas = swap.Replicas(exp, states, execution, devices)
  examples = config.swap.num_replicas * config.swap.batch_size
  # Case protocol: fn(state, *args) -> (state, ...); the "state" is the step's metrics, so
  # blocking on it waits for the step; Replicas keeps the donated states itself.
  case = common.Case(name, lambda _, r=replicas: (r.step(0),), None, (), examples=examples,
                     state_mib=common.tree_mib(states) / config.swap.num_replicas)
  return Measured(case)


def _row(measurement, m: Measured, devices: int, batch: int, ratio, label=None):
  c = m.case
  return [measurement, label or c.name, devices, batch, m.micro_batch_size or "—", 1e3 * c.median,
          c.images_per_sec, ratio, c.xla_mib, m.peak_mib, m.compile_s]


def interleave(measured, rounds: int, steps: int) -> None:
  """``rounds`` timed rounds of ``steps`` steps of every (warmed-up) case, the order reversed
  every other round (as ``common.interleave``, without its second warm-up)."""
  cases = [m.case for m in measured]
  for r in range(rounds):
    for case in (cases if r % 2 == 0 else list(reversed(cases))):
      case.run(steps)


def device_counts(n: int) -> list[int]:
  counts, k = [], 1
  while k < n:
    counts.append(k)
    k *= 2
  return counts + [n]


def swap_replicas(wanted: int, num_devices: int) -> int:
  """``wanted`` replicas if they can be laid out on the devices (one divides the other), else
  one per device."""
  ok = wanted % num_devices == 0 or num_devices % wanted == 0
  return wanted if ok else num_devices


def run(sizes: dict, rounds: int, steps: int) -> float:
  devices = jax.local_devices()
  n = len(devices)
  data = synthetic_data(sizes["examples"])
  model = sizes["model"]
  rows, start = [], time.time()
  # The machine line first and each section's rows as soon as they are measured (flushed): a run
  # cut off by a device-time limit keeps what it measured (the full table follows at the end).
  print(common.machine_line(), flush=True)

  def emit(section: str, new_rows) -> None:
    rows.extend(new_rows)
    print(f"[{time.time() - start:.0f} s] {section}:", flush=True)
    common.print_table(HEADER, new_rows)
    sys.stdout.flush()

  # 1. Throughput: float32 vs bfloat16 at each global batch, on all devices.
  ratio_at = {}
  sgd_at = {}  # global batch -> its float32 SGD case on all devices (the same step as below)

  def sgd_case(label, batch, devs) -> Measured:
    """The float32 SGD step at ``batch`` on ``devs``: section 1's case where it has one (one
    compile less; its timings start afresh, paired with the new section's), else a new one."""
    m = sgd_at.get(batch) if len(devs) == n else None
    if m is None:
      return measure_train(label, make_config(model, batch), data, devs)
    m.case.times, m.case.cpu_times = [], []
    return m

  for batch in sizes["batches"]:
    pair = [measure_train(f"{model} {dtype}", make_config(model, batch, dtype), data, devices)
            for dtype in DTYPES]
    interleave(pair, rounds, steps)
    ratio = common.paired_ratio(pair[0].case, pair[1].case)  # f32 time / bf16 time
    ratio_at[batch] = ratio
    sgd_at[batch] = pair[0]
    emit(f"throughput at batch {batch}", [_row("throughput", pair[0], n, batch, None),
                                           _row("throughput", pair[1], n, batch, ratio)])
    del pair

  # 2. SWAP phase 2: vmap vs loop.
  k = swap_replicas(sizes["replicas"], n)
  c = make_config(model, sizes["replica_batch"] * k)
  c.swap.enabled = True
  c.swap.num_replicas = k
  c.swap.batch_size = sizes["replica_batch"]
  pair = [measure_swap(f"{k} replicas, {execution}", c, data, execution, devices)
          for execution in ("vmap", "loop")]
  interleave(pair, rounds, steps)
  swap_ratio = common.paired_ratio(pair[0].case, pair[1].case)
  emit("SWAP phase 2", [_row("SWAP phase 2", pair[0], n, k * sizes["replica_batch"], swap_ratio),
                        _row("SWAP phase 2", pair[1], n, k * sizes["replica_batch"], None)])
  del pair

  # 3. K-FAC vs SGD.
  batch = sizes["kfac_batch"]
  pair = [measure_train(f"{model} kfac", make_config(model, batch, optimizer="kfac"), data,
                        devices),
          sgd_case(f"{model} sgd", batch, devices)]
  interleave(pair, rounds, steps)
  emit("K-FAC", [_row("K-FAC", pair[0], n, batch, common.paired_ratio(pair[0].case, pair[1].case)),
                 _row("K-FAC", pair[1], n, batch, None, label=f"{model} sgd")])
  del pair

  # 4. Data parallel ("pmap") over 1, 2, 4, ... all devices at a fixed per-device batch.
  scaling = []
  for d in device_counts(n):
    batch = sizes["per_device"] * d
    scaling.append(sgd_case(f"{model} on {d}", batch, devices[:d]))
  interleave(scaling, rounds, steps)
  per_device_1 = scaling[0].case.images_per_sec
  emit("pmap", [_row("pmap", m, d, sizes["per_device"] * d,
                     m.case.images_per_sec / d / per_device_1, label=f"{model} on {d}")
                for d, m in zip(device_counts(n), scaling)])

  print()
  print(f"{model} on synthetic 32x32x3 batches; {rounds} interleaved rounds x {steps} steps per "
        f"case; step ms = median; ratio: throughput bf16/f32 images/s, SWAP vmap/loop step time, "
        f"K-FAC kfac/sgd step time, pmap images/s per device vs 1 device; "
        f"{time.time() - start:.0f} s in all")
  print()
  common.print_table(HEADER, rows)
  print()
  print(f"process peak RSS {common.peak_rss_mib():,.0f} MiB")
  return ratio_at[sizes["ratio_batch"]]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (ResNet-tiny, batches 16/32/64) to check the suite on CPU")
  parser.add_argument("--rounds", type=int, default=None, help="interleaved timed rounds")
  parser.add_argument("--steps", type=int, default=None, help="steps per round and case")
  args = parser.parse_args(argv)
  if args.smoke:
    # Compile fast, run slow: the smoke run checks the suite, it measures nothing. XLA reads its
    # flags when the backend starts (the first device query), which is after this.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SMOKE_XLA_FLAGS).strip()
  sizes = SMOKE if args.smoke else FULL
  ratio = run(sizes, args.rounds or sizes["rounds"], args.steps or sizes["steps"])
  common.print_ratio(ratio)


if __name__ == "__main__":
  main()
