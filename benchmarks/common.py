r"""Shared timing for the benchmarks: interleaved rounds in one process, medians, memory.

Timing noise between processes is ±20–40 % on the shared CPUs (``/work/shared/NOTES.md``), so a
benchmark builds every side it compares in **one** process and times them in interleaved rounds
(A B, then B A, ...): drift in the machine's load hits both sides alike and cancels in their
ratio. Each side is a :class:`Case`: a compiled step with its donated state and one batch already
on the devices (for lbjax's train step: ``Experiment.train_program`` over a `lbjax.mesh` mesh,
the state a replicated global array, the batch a global array sharded over ``"batch"``). Its
first call (trace + XLA compile + one step) is timed apart as ``compile_s``; every round after
runs ``steps`` steps and waits with ``jax.block_until_ready``. A case's step time is the median
over rounds of seconds per step; a ratio of two cases is the median over rounds of their
per-round ratio (:func:`paired_ratio`): the two were timed next to each other in every round, so
the ratio of each pair sees nearly the same load. Each round also records the process's CPU
seconds per step (``Case.cpu_times``, ``paired_ratio(..., cpu=True)``).

Memory, beside each step time:

* ``state MiB``: one replica's train state (parameters, BatchNorm statistics, optimizer state);
* ``XLA MiB``: the compiled step's per-device footprint from XLA's memory analysis, arguments +
  outputs − donated aliases + temporaries (the same on any backend, no device query needed);
* process peak RSS (``resource.getrusage``) and, where the backend reports it (GPU, TPU; not
  XLA:CPU), the device's ``peak_bytes_in_use`` (``jax.devices()[0].memory_stats()``).

Every benchmark prints a table and ``ratio: X`` as its last line (:func:`print_ratio`).
"""

import argparse
from collections.abc import Callable, Sequence
import dataclasses
import math
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from configs import default  # pylint: disable=wrong-import-position
from lbjax import accumulate  # pylint: disable=wrong-import-position
from lbjax import mesh as mesh_lib  # pylint: disable=wrong-import-position
from lbjax import step as step_lib  # pylint: disable=wrong-import-position
from lbjax.optim import registry  # pylint: disable=wrong-import-position

MIB = 2.0 ** 20


def with_optimizer(exp: step_lib.Experiment, tx: optax.GradientTransformation
                   ) -> step_lib.Experiment:
  """``exp`` with its optimizer replaced by ``tx``: same model, data, augmentation and loss.

  The train step is rebuilt with :func:`lbjax.step.make_step_parts` exactly as
  :func:`lbjax.step.build` builds it (no SmoothOut, no K-FAC capture), so two experiments that
  differ only in ``tx`` run the same program around the optimizer update.
  """
  data = exp.data
  parts = step_lib.make_step_parts(
      exp.model, tx, augment_mode=exp.config.augment,
      num_classes=data.num_classes, mean=np.asarray(data.mean, np.float32),
      std=np.asarray(data.std, np.float32), learning_rate=exp.learning_rate)
  return exp._replace(tx=tx, train_parts=parts, train_step=accumulate.scan_step(
      parts, exp.config.get("micro_batch_size"), axis_name=step_lib.AXIS))


def tree_mib(tree) -> float:
  return sum(x.nbytes for x in jax.tree.leaves(tree)) / MIB


@dataclasses.dataclass
class Case:
  """One side of a comparison: ``fn(state, *args) -> (state, ...)`` with ``state`` donated.

  ``examples`` is the number of images one call processes (all devices), for images/s.
  """
  name: str
  fn: Callable
  state: Any
  args: tuple
  examples: int
  state_mib: float = float("nan")
  xla_mib: float | None = None
  compile_s: float = float("nan")
  times: list = dataclasses.field(default_factory=list)  # seconds per step, one per round
  # CPU seconds per step of this process (all threads), one per round: less sensitive than
  # wall time to the other jobs on a shared machine, which take cores, not this process's work.
  cpu_times: list = dataclasses.field(default_factory=list)

  def warm_up(self):
    """Compiles and runs one step (timed as ``compile_s``); records the XLA footprint."""
    jax.block_until_ready(self.state)
    start = time.perf_counter()
    self.state = jax.block_until_ready(self.fn(self.state, *self.args)[0])
    self.compile_s = time.perf_counter() - start
    lower = getattr(self.fn, "lower", None)  # the host-accumulation step is not one program
    if lower is not None:
      try:  # the executable is cached: this reads it, it does not compile again
        m = lower(self.state, *self.args).compile().memory_analysis()
        self.xla_mib = (m.argument_size_in_bytes + m.output_size_in_bytes
                        - m.alias_size_in_bytes + m.temp_size_in_bytes) / MIB
      except Exception:  # noqa: BLE001  (a backend without the analysis raises its own error)
        self.xla_mib = None

  def run(self, steps: int) -> float:
    """Runs ``steps`` steps; returns and records seconds per step."""
    state = self.state
    jax.block_until_ready(state)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
      state = self.fn(state, *self.args)[0]
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - start) / steps
    self.state = state
    self.times.append(seconds)
    self.cpu_times.append((time.process_time() - start_cpu) / steps)
    return seconds

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def images_per_sec(self) -> float:
    return self.examples / self.median


def train_case(name: str, exp: step_lib.Experiment,
               devices: Sequence[jax.Device] | None = None, state=None) -> Case:
  """The train step of ``exp`` as ``train_and_evaluate`` runs it (``exp.train_program`` over the
  ``("batch",)`` mesh of ``devices``, default all local; state replicated and donated), with
  batch 0 already on the devices, sharded over ``"batch"``. ``state``: a host train state to
  start from (default ``exp.init_state()``)."""
  mesh = mesh_lib.data_mesh(jax.local_devices() if devices is None else devices)
  state = exp.init_state() if state is None else state
  return Case(name, exp.train_program(mesh), mesh_lib.put_replicated(state, mesh),
              (exp.put_train_batch(0, mesh),), examples=exp.config.batch_size,
              state_mib=tree_mib(state))


def update_case(name: str, exp: step_lib.Experiment) -> Case:
  """The optimizer update alone, ``tx.update`` + ``apply_updates`` jitted with the parameters
  and optimizer state donated, on ``exp``'s parameters and a fixed gradient (one device)."""
  state = exp.init_state()
  grads = jax.tree.map(lambda p: 1e-3 * jax.numpy.ones_like(p), state.params)
  tx = exp.tx

  def update(carry, grads):
    params, opt_state = carry
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  return Case(name, jax.jit(update, donate_argnums=(0,)), (state.params, state.opt_state),
              (grads,), examples=exp.config.batch_size,
              state_mib=tree_mib((state.params, state.opt_state)))


def interleave(cases: Sequence[Case], rounds: int, steps: int) -> None:
  """Warms every case up, then ``rounds`` timed rounds of ``steps`` steps each, alternating the
  order (A B C, C B A, ...) so a trend in the machine's load falls on every case alike."""
  for case in cases:
    case.warm_up()
  for r in range(rounds):
    for case in (cases if r % 2 == 0 else list(reversed(cases))):
      case.run(steps)


def peak_rss_mib() -> float:
  """This process's peak resident set size (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_peak_mib() -> float | None:
  """``peak_bytes_in_use`` of the first device where the backend reports it (None on CPU)."""
  stats = jax.devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / MIB


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine_line(devices: str | None = None) -> str:
  """Cores, CPU model, load average (1, 5, 15 min), jax, devices and the date."""
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  if devices is None:
    local = jax.local_devices()
    devices = f"{len(local)} x {local[0].device_kind} ({jax.default_backend()})"
  return (f"machine: {os.cpu_count()} CPU cores ({cpu_model()}), load average {load}; "
          f"jax {jax.__version__}, {devices}; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")


def memory_line() -> str:
  device = device_peak_mib()
  device_text = (f"{device:,.0f} MiB" if device is not None
                 else f"not reported by {jax.default_backend()}")
  return f"memory: process peak RSS {peak_rss_mib():,.0f} MiB; device peak {device_text}"


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
  """A plain-text (and Markdown-compatible) table."""
  cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
  line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
  print(line(cells[0]))
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for row in cells[1:]:
    print(line(row))


def _cell(value) -> str:
  if value is None:
    return "n/a"
  if isinstance(value, float):
    if math.isnan(value):
      return "n/a"
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
  return str(value)


def paired_ratio(case: Case, reference: Case, cpu: bool = False) -> float:
  """Median over rounds of ``case``'s step time over ``reference``'s in the same round (with
  ``cpu``, of their CPU times)."""
  mine, theirs = (case.cpu_times, reference.cpu_times) if cpu else (case.times, reference.times)
  return statistics.median(a / b for a, b in zip(mine, theirs))


def case_rows(cases: Sequence[Case], reference: Case) -> list[list[Any]]:
  """Table rows: step time, its spread over rounds, images/s, memory, compile time, ratio."""
  return [[c.name, 1e3 * c.median, f"{1e3 * min(c.times):,.1f}–{1e3 * max(c.times):,.1f}",
           c.images_per_sec, c.state_mib, c.xla_mib, c.compile_s, paired_ratio(c, reference)]
          for c in cases]


CASE_HEADER = ("case", "step ms (median)", "min–max ms", "images/s", "state MiB", "XLA MiB",
               "compile s", "ratio (paired median)")


def model_parser(description: str, *, model="resnet18", image_size=8, batch_size=32, rounds=10,
                 steps=2) -> argparse.ArgumentParser:
  """The flags every train-step benchmark takes (defaults: ResNet-18 on digits at 8x8)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--model", default=model)
  parser.add_argument("--image_size", type=int, default=image_size)
  parser.add_argument("--batch_size", type=int, default=batch_size, help="global")
  parser.add_argument("--rounds", type=int, default=rounds, help="interleaved timed rounds")
  parser.add_argument("--steps", type=int, default=steps, help="steps per round and case")
  return parser


def optimizer_config(args, optimizer: str, **settings):
  """A digits config for ``args.model`` with ``config.optimizer`` = ``optimizer(**settings)``,
  constant learning rate, crop + normalize augmentation (as ``configs/quickstart.py``)."""
  c = default.get_config()
  c.dataset = "digits"
  c.image_size = args.image_size
  c.augment = "crop+normalize"
  c.model.name = args.model
  c.batch_size = args.batch_size
  c.optimizer = registry.config_block(optimizer, **settings)
  c.schedule.name = "constant"
  return c


def compare_with_reference(args, exp: step_lib.Experiment, label: str, reference_label: str,
                           reference: Callable[[optax.Schedule], optax.GradientTransformation]
                           ) -> float:
  """Times ``exp``'s train step against the same step with ``reference(exp.learning_rate)`` as
  the optimizer, plus both updates alone; prints the table; returns lbjax / reference."""
  ref = with_optimizer(exp, reference(exp.learning_rate))
  devices = jax.local_devices()[:1]
  cases = [train_case(f"{label} step", exp, devices),
           train_case(f"{reference_label} step", ref, devices),
           update_case(f"{label} update only", exp),
           update_case(f"{reference_label} update only", ref)]
  interleave(cases, args.rounds, args.steps)
  print(machine_line())
  print(f"{args.model} on digits {args.image_size}x{args.image_size}, batch {args.batch_size} on "
        f"1 device, {args.rounds} interleaved rounds x {args.steps} steps; ratio = case / "
        f"{reference_label}")
  print_table(CASE_HEADER, case_rows(cases[:2], cases[1]) + case_rows(cases[2:], cases[3]))
  print(memory_line())
  return paired_ratio(cases[0], cases[1])


def print_ratio(ratio: float) -> None:
  """The last line of every benchmark."""
  print(f"ratio: {ratio:.3f}", flush=True)
