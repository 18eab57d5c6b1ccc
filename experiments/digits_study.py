r"""The large-batch mini-study on the embedded digits (`configs/digits_study.py`), one command:

    python -m experiments.digits_study --root=runs/digits_study [--out=results.md]

1. runs the six runs of the config's sweep (`experiments.run`: finished runs are skipped, so a
   rerun only re-prints);
2. prints one table — method, batch, optimizer (its learning rate after linear scaling),
   optimizer steps, test accuracy, test loss, seconds — and writes the learning curves
   (`experiments.report`);
3. writes ``ROOT/interpolation.png``: θ(α) = (1−α)θ_SB + αθ_LB between the small- and large-batch
   SGD solutions, α from −1 to 2, BatchNorm recomputed at every α (seed 001 Fig. 3,
   `lbjax.analysis.interpolation`), and prints the curve.

``--out`` also writes the table, the curve and the command to a markdown file.
"""

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

from configs import digits_study
from experiments import report as report_lib
from experiments import run as run_lib
from lbjax import schedules
from lbjax.errors import ConfigError

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = os.path.join(ROOT_DIR, "configs", "digits_study.py")
SB, LB = "1_sb_sgd", "2_lb_sgd"  # the interpolation's two ends


def _optimizer(config: dict) -> str:
  name = config["optimizer.name"]
  extra = []
  if config.get("smoothout.scale"):
    extra.append(f"SmoothOut s={config['smoothout.scale']:g}")
  if config.get("swap.enabled"):
    extra.append(f"SWAP {config['swap.num_replicas']}×SGD@{config['swap.batch_size']}")
  lr = schedules.scaled_learning_rate(config["optimizer.learning_rate"], config["batch_size"],
                                     config.get("schedule.base_batch_size"))
  return f"{name} lr={lr:g}" + (f" + {', '.join(extra)}" if extra else "")


def table(root: str, seconds: dict[str, float]) -> str:
  """The study's table from the runs' config.json and status.json."""
  runs = {os.path.basename(r.name): r for r in report_lib.collect(root)}
  lines = ["| run | method | batch | optimizer | steps | test accuracy | test loss | seconds |",
           "|---|---|---|---|---|---|---|---|"]
  for name, label in digits_study.LABELS.items():
    run = runs.get(name)
    if run is None:
      lines.append(f"| {name} | {label} | | | | {report_lib.MISSING} | | |")
      continue
    status = run.status or {}
    acc, loss = status.get("test_accuracy"), status.get("test_loss")
    steps = status.get("step", "")
    if run.config.get("swap.enabled"):  # phase-1 steps + phase-2 steps (of every replica)
      steps = f"{status.get('phase1_step', '?')} + {steps}"
    acc = f"{100 * acc:.2f}" if isinstance(acc, (int, float)) else status.get("status", "")
    loss = f"{loss:.4f}" if isinstance(loss, (int, float)) else ""
    secs = f"{seconds[name]:.0f}" if name in seconds else "(earlier)"
    lines.append(f"| {name} | {label} | {run.config['batch_size']} | {_optimizer(run.config)} "
                 f"| {steps} | {acc} | {loss} | {secs} |")
  return "\n".join(lines)


def interpolation_table(curve) -> str:
  lines = ["| α | train loss | train acc | test loss | test acc |", "|---|---|---|---|---|"]
  for i, alpha in enumerate(curve["alpha"]):
    lines.append(f"| {alpha:+.2f} | {curve['train_loss'][i]:.4f} | "
                 f"{100 * curve['train_accuracy'][i]:.2f} | {curve['test_loss'][i]:.4f} | "
                 f"{100 * curve['test_accuracy'][i]:.2f} |")
  return "\n".join(lines)


def run(root: str, out: str | None = None, num_points: int = 13) -> str:
  """Runs the study under ``root``; returns (and optionally writes) the markdown."""
  from lbjax.analysis import interpolate  # pylint: disable=g-import-not-at-top
  start = time.time()
  seconds: dict[str, float] = {}
  for planned in run_lib.plan(CONFIG, root):  # one at a time, to time each run
    t0 = time.time()
    result = run_lib.run_sweep(CONFIG, root, only=planned.name)[planned.name]
    if not result.get("skipped"):
      seconds[planned.name] = time.time() - t0
    if result["status"] == "preempted":
      raise SystemExit("lbjax: preempted; rerun the same command to continue")
  report_lib.report(root, report_lib.runs_table(report_lib.collect(root), "digits_study"))
  png = os.path.join(root, "interpolation.png")
  t0 = time.time()
  curve = interpolate.run(os.path.join(root, SB), os.path.join(root, LB), png,
                          num_points=num_points)["curves"][0]
  seconds["interpolation"] = time.time() - t0
  total = time.time() - start
  text = "\n".join([
      "## Large batch on the digits (`configs/digits_study.py`)", "",
      table(root, seconds), "",
      f"Interpolation θ(α) = (1−α)θ_SB + αθ_LB between `{SB}` (α = 0) and `{LB}` (α = 1), "
      f"BatchNorm recomputed at each α ({seconds['interpolation']:.0f} s; `{png}`):", "",
      interpolation_table(curve), "",
      f"Total wall time {total:.0f} s.", ""])
  print(text, flush=True)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      f.write(text)
  return text


FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("root", "runs/digits_study", "Directory of the six runs.")
  flags.DEFINE_string("out", None, "Also write the markdown here.")
  flags.DEFINE_integer("num_points", 13, "Points of the interpolation (α from −1 to 2).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  try:
    run(FLAGS.root, FLAGS.out, FLAGS.num_points)
  except ConfigError as e:
    sys.exit(f"lbjax: error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
