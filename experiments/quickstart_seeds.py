r"""Every quickstart optimizer on several seeds, through the launcher: the table of issue 26.

    python -m experiments.quickstart_seeds --root=runs/quickstart_seeds \
        [--names=sgd,nag] [--seeds=0,1,2] [--out=experiments/results/quickstart_seeds.md]

runs, one at a time, ``python -m lbjax.main --config=configs/quickstart.py:NAME
--workdir=ROOT/NAME,seed=S --config.seed=S --config.progress_bar=False`` for every optimizer of
``configs/quickstart.py:OPTIMIZERS`` (or ``--names``) and every seed, each run's output in
``ROOT/NAME,seed=S.log``, then prints (and with ``--out`` writes) one markdown table: the test
accuracy of the model each run reports (``result_test_accuracy`` in its ``status.json``) per
seed, their mean and minimum, and whether every seed reaches ``--threshold`` (0.90, the
quickstart's promise). A run whose ``status.json`` says completed or diverged is not run again
(its recorded result is used), so a rerun only re-prints; a run whose workdir holds an older
config (``configs/quickstart.py`` was edited) is refused by the launcher and shown as an error:
remove that workdir to measure the new hyperparameters. Exits 1 when a run failed or missed the
threshold.
"""

from collections.abc import Sequence
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

from configs import quickstart
from lbjax import metrics as metrics_lib

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/quickstart.py"
DONE = ("completed", "diverged")

FLAGS = flags.FLAGS


def run_name(name: str, seed: int) -> str:
  return f"{name},seed={seed}"


def command(name: str, seed: int, workdir: str) -> list[str]:
  """The launcher command of one run."""
  return [sys.executable, "-m", "lbjax.main", f"--config={CONFIG}:{name}",
          f"--workdir={workdir}", f"--config.seed={seed}", "--config.progress_bar=False"]


def run_one(root: str, name: str, seed: int) -> dict:
  """Runs (or reads) ``name`` with ``seed``: ``status``, ``accuracy``, ``seconds`` (None when it
  was not trained by this call) and ``error`` (the launcher's last stderr line on failure)."""
  workdir = os.path.join(root, run_name(name, seed))
  status = metrics_lib.read_status(workdir)
  seconds = None
  if status is None or status.get("status") not in DONE:
    log = os.path.join(root, run_name(name, seed) + ".log")
    start = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [ROOT_DIR, os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as f:
      proc = subprocess.run(command(name, seed, workdir), cwd=ROOT_DIR, env=env, stdout=f,
                            stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - start
    status = metrics_lib.read_status(workdir)
    if proc.returncode not in (0, 3) or status is None:  # 3: diverged
      with open(log) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
      return {"status": "error", "accuracy": None, "seconds": seconds,
              "error": lines[-1] if lines else f"exit code {proc.returncode}"}
  return {"status": status["status"], "accuracy": status.get("result_test_accuracy"),
          "seconds": seconds, "error": None}


def _hyperparameters(name: str) -> str:
  return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in quickstart.OPTIMIZERS[name].items())


def table(results: dict[tuple[str, int], dict], names: Sequence[str], seeds: Sequence[int],
          threshold: float) -> tuple[str, bool]:
  """The markdown table and whether every run reached ``threshold``."""
  head = ["optimizer", "hyperparameters", *(f"seed {s}" for s in seeds), "mean", "min",
          f"all >= {threshold:.2f}"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  every = True
  for name in names:
    cells, accs = [], []
    for seed in seeds:
      r = results[(name, seed)]
      if r["accuracy"] is None:
        cells.append(r["status"])
      else:
        accs.append(r["accuracy"])
        cells.append(f"{r['accuracy']:.4f}" + ("" if r["status"] == "completed"
                                               else f" ({r['status']})"))
    ok = len(accs) == len(seeds) and min(accs) >= threshold
    every &= ok
    mean = f"{sum(accs) / len(accs):.4f}" if accs else "—"
    low = f"{min(accs):.4f}" if accs else "—"
    lines.append("| " + " | ".join([name, _hyperparameters(name), *cells, mean, low,
                                    "yes" if ok else "**no**"]) + " |")
  return "\n".join(lines), every


def define_flags() -> None:
  flags.DEFINE_string("root", None, "Directory of the runs (ROOT/NAME,seed=S).")
  flags.DEFINE_list("names", list(quickstart.OPTIMIZERS), "Optimizers of configs/quickstart.py.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Values of config.seed.")
  flags.DEFINE_float("threshold", 0.90, "Test accuracy every run must reach.")
  flags.DEFINE_string("out", None, "Also write the table to this markdown file.")
  flags.mark_flag_as_required("root")


def main(argv):
  del argv
  unknown = [n for n in FLAGS.names if n not in quickstart.OPTIMIZERS]
  if unknown:
    sys.exit(f"error: --names: unknown {unknown}; allowed: {', '.join(quickstart.OPTIMIZERS)}")
  seeds = [int(s) for s in FLAGS.seeds]
  os.makedirs(FLAGS.root, exist_ok=True)
  results = {}
  for name in FLAGS.names:
    for seed in seeds:
      r = results[(name, seed)] = run_one(FLAGS.root, name, seed)
      took = "" if r["seconds"] is None else f" ({r['seconds']:.0f} s)"
      shown = r["error"] or (f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "")
      print(f"{run_name(name, seed)}: {r['status']} {shown}{took}", flush=True)
  text, ok = table(results, FLAGS.names, seeds, FLAGS.threshold)
  trained = [r["seconds"] for r in results.values() if r["seconds"] is not None]
  if trained:
    text += (f"\n\n{len(trained)} run(s) trained by this invocation, one at a time: "
             f"{sum(trained) / len(trained):.0f} s per run on average.")
  print(text, flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")
  if not ok:
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
