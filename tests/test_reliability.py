"""Faults a long job meets: kill -9, SIGTERM, a corrupt checkpoint, and a table of bad inputs.

Each fault must lose at most the work since the last checkpoint and leave the final result
bit-identical to an uninterrupted run; bad input must stop with one line naming the key and
leave the workdir exactly as it was.
"""

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time

from absl import flags
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lbjax import main as lbjax_main
from lbjax import metrics as metrics_lib
from tests import xla
from tests.hang import HANG_SECONDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--config=configs/quickstart.py", "--config.image_size=16", "--config.batch_size=32",
        "--config.num_epochs=1.6", "--config.schedule.warmup_epochs=0.5",
        "--config.checkpoint_every_steps=10", "--config.log_every_steps=5",
        "--config.progress_bar=False"]


def start(workdir, *extra):
  env = xla.process_env(2)
  return subprocess.Popen([sys.executable, "-m", "lbjax.main", *FAST, *extra,
                           f"--workdir={workdir}"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def checkpoint_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def wait_for_checkpoint(proc, workdir, min_step):
  t0 = time.time()
  while time.time() - t0 < HANG_SECONDS:
    if proc.poll() is not None:
      raise AssertionError("run ended before it could be interrupted:\n" + proc.stdout.read())
    if any(s >= min_step for s in checkpoint_steps(workdir)):
      return
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared")


def final_params(workdir):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    step = manager.latest_step()
    tree = manager.restore(step, args=ocp.args.StandardRestore())
  return step, tree


def assert_bit_identical(a, b):
  import jax  # pylint: disable=g-import-not-at-top
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def read_until_step(proc, min_step):
  """Reads the run's output until it logs a training step >= ``min_step`` (every 5 steps; the
  run is then inside its loop, signal handler installed); returns what it read."""
  lines = []
  for line in proc.stdout:
    lines.append(line)
    logged = re.match(r"\[step (\d+)\] train_", line)
    if logged and int(logged.group(1)) >= min_step:
      return "".join(lines)
  proc.wait()
  raise AssertionError("run ended before it could be interrupted:\n" + "".join(lines)[-3000:])


def test_kill9_and_sigterm_at_random_steps_resume_bit_identically(tmp_path):
  """kill -9 twice at random steps (a step is logged every 5, checkpoints every 10, so some kills
  land between checkpoints or during an asynchronous save), then SIGTERM, then the rest: the
  result is bit-identical to an uninterrupted run. The interruptions are placed by the steps
  the run logs, not by time, so each lands mid-run on any machine: the SIGTERM a few steps after
  the resume from the kills' last checkpoint (< 72 of 144 steps)."""
  kill_run = ["--config.num_epochs=3.2"]  # 144 steps of 32 (45 an epoch)
  reference = str(tmp_path / "reference")
  proc = start(reference, *kill_run)
  out = proc.communicate(timeout=HANG_SECONDS)[0]
  assert proc.returncode == 0, out[-3000:]
  assert "resuming" not in out
  total = metrics_lib.read_status(reference)["total_steps"]
  assert total == 144

  rng = np.random.default_rng(0)
  workdir = str(tmp_path / "interrupted")
  killed_at = []
  for min_step in sorted(rng.integers(12, 50, size=2)):
    proc = start(workdir, *kill_run)
    read_until_step(proc, int(min_step))
    proc.kill()
    proc.wait()
    killed_at.append(int(min_step))
  resumed_from = max(checkpoint_steps(workdir))
  assert 10 <= resumed_from < total // 2, (resumed_from, killed_at)

  proc = start(workdir, *kill_run)
  out = read_until_step(proc, resumed_from + 1)
  assert f"resuming from step {resumed_from} " in out, out[-3000:]
  proc.send_signal(signal.SIGTERM)
  out += proc.communicate(timeout=HANG_SECONDS)[0]
  assert proc.returncode == 0, out[-3000:]
  status = metrics_lib.read_status(workdir)
  assert status["status"] == "preempted", (status, out[-3000:])
  assert f"preempted at step {status['step']}" in out, out[-3000:]
  assert resumed_from < status["step"] < total
  assert status["step"] == max(checkpoint_steps(workdir))  # saved where it stopped

  proc = start(workdir, *kill_run)
  out = proc.communicate(timeout=HANG_SECONDS)[0]
  assert proc.returncode == 0, out[-3000:]
  assert f"resuming from step {status['step']} " in out, out[-3000:]
  assert metrics_lib.read_status(workdir)["status"] == "completed"
  step_a, a = final_params(reference)
  step_b, b = final_params(workdir)
  assert step_a == step_b == total
  assert_bit_identical(a, b)
  ref_status = metrics_lib.read_status(reference)
  assert metrics_lib.read_status(workdir)["test_accuracy"] == ref_status["test_accuracy"]


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from lbjax import train  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.image_size, config.batch_size, config.num_epochs = 16, 32, 1.0
  config.checkpoint_every_steps, config.progress_bar = 20, False
  config.schedule.warmup_epochs = 0.0
  reference = train.train_and_evaluate(config, str(tmp_path / "reference"))
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  steps = checkpoint_steps(workdir)
  latest = os.path.join(workdir, "checkpoints", str(steps[-1]))
  # Truncate every data file of the newest checkpoint, as a disk error mid-write would.
  for root, _, files in os.walk(latest):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(0, os.path.getsize(f.name) // 3))
  capsys.readouterr()
  resumed = train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert f"checkpoint step {steps[-1]} is unreadable" in out
  assert f"resuming from step {steps[-2]}" in out
  # The unreadable step is kept for inspection, out of orbax's way.
  assert os.path.isdir(latest + ".unreadable")
  assert resumed["status"] == "completed"
  assert resumed["test_accuracy"] == reference["test_accuracy"]
  assert_bit_identical(final_params(str(tmp_path / "reference"))[1]["params"],
                       final_params(workdir)[1]["params"])



def test_signal_arriving_mid_step_still_saves_the_step_it_stops_at(tmp_path):
  """A SIGTERM delivered after the step decided not to save (here: during the evaluation) is
  acted on at the next step, with its checkpoint; it never stops without one."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from lbjax import train  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.image_size, config.batch_size, config.num_epochs = 16, 32, 1.0
  config.checkpoint_every_steps, config.progress_bar = 1000, False
  config.eval_every_epochs = 0.25  # every 11 steps; not a checkpoint step
  config.schedule.warmup_epochs = 0.0
  sent = []

  def callback(step, _):
    if not sent:
      sent.append(step)
      os.kill(os.getpid(), signal.SIGTERM)  # handled before the step's save/stop decision ends
    return False

  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(config, workdir, callback=callback)
  assert summary["status"] == "preempted"
  assert summary["step"] == sent[0] + 1
  assert checkpoint_steps(workdir) == [summary["step"]]
  assert metrics_lib.read_status(workdir)["step"] == summary["step"]

def _snapshot(path):
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = f.read()
  return out


def run_launcher(argv):
  """Runs the launcher in-process; returns (exit code, stderr+message)."""
  flag_values = flags.FlagValues()
  lbjax_main.define_flags(flag_values)
  err = io.StringIO()
  code = 0
  argv = ["lbjax", *argv]
  saved_argv, sys.argv = sys.argv, argv  # ml_collections reads --config.* overrides there
  with contextlib.redirect_stderr(err):
    try:
      remaining = lbjax_main.parse_flags(argv, flag_values)
      lbjax_main.main(remaining, flag_values)
    except SystemExit as e:
      code = e.code
    except flags.IllegalFlagValueError as e:  # absl's required-flag check, as app.run reports it
      err.write(f"lbjax: error: {e}")
      code = 1
    finally:
      sys.argv = saved_argv
  if isinstance(code, str):
    err.write(code)
    code = 1
  return code, err.getvalue()


BAD = [
    ("unknown key", ["--config.no_such_key=1"], "--config.no_such_key"),
    ("unknown nested key", ["--config.schedule.no_such=1"], "--config.schedule.no_such"),
    ("wrong type", ["--config.batch_size=abc"], "config.batch_size"),
    ("float batch", ["--config.num_epochs=abc"], "config.num_epochs"),
    ("unknown model", ["--config.model.name=resnet1000"], "config.model.name"),
    ("unknown optimizer", ["--config.optimizer.name=sgdd"], "config.optimizer.name"),
    ("hyperparameter of another optimizer", ["--config.optimizer.b1=0.5"], "config.optimizer.b1"),
    ("optimizer switched with a key it does not take",
     ["--config.optimizer.name=adam", "--config.optimizer.momentum=0.5"],
     "config.optimizer.momentum"),
    ("missing config file", ["--config=configs/no_such_config.py"],
     "--config=configs/no_such_config.py"),
    ("unknown quickstart optimizer", ["--config=configs/quickstart.py:sgdd"],
     "--config=configs/quickstart.py:sgdd"),
    ("unknown dataset", ["--config.dataset=mnist"], "config.dataset"),
    ("unknown augmentation", ["--config.augment=crop+sepia"], "config.augment"),
    ("unknown schedule", ["--config.schedule.name=triangle"], "config.schedule.name"),
    ("zero batch", ["--config.batch_size=0"], "config.batch_size"),
    ("negative batch", ["--config.batch_size=-128"], "config.batch_size"),
    ("batch not divisible by devices", ["--config.batch_size=30"], "config.batch_size"),
    ("zero lr", ["--config.optimizer.learning_rate=0"], "config.optimizer.learning_rate"),
    ("negative lr", ["--config.optimizer.learning_rate=-0.1"], "config.optimizer.learning_rate"),
    ("zero epochs", ["--config.num_epochs=0"], "config.num_epochs"),
    ("warmup longer than training", ["--config.schedule.warmup_epochs=100"],
     "config.schedule.warmup_epochs"),
    ("missing data_dir", ["--config.dataset=cifar10"], "config.data_dir"),
    ("data_dir without CIFAR-10", ["--config.dataset=cifar10", "--config.data_dir=/nonexistent"],
     "config.data_dir"),
    ("validation fraction", ["--config.validation_fraction=1.5"], "config.validation_fraction"),
    ("zero eval batch", ["--config.eval_batch_size=0"], "config.eval_batch_size"),
    ("zero keep", ["--config.keep_checkpoints=0"], "config.keep_checkpoints"),
    ("negative warmup", ["--config.schedule.warmup_epochs=-1"], "config.schedule.warmup_epochs"),
    ("unknown ghost batch", ["--config.model.ghost_batch_size=7"], "config.model.ghost_batch_size"),
    ("ghost batch on a model without BatchNorm", ["--config.model.ghost_batch_size=4"],
     "config.model.ghost_batch_size"),  # quickstart's LeNet-5
    ("negative seed", ["--config.seed=-1"], "config.seed"),
    ("unknown SWAP optimizer", ["--config.swap.enabled=True", "--config.swap.optimizer.name=sgdd"],
     "config.swap.optimizer.name"),
    ("multi-host without process id", ["--coordinator_address=127.0.0.1:1"],
     "--num_processes/--process_id"),
]


@pytest.mark.parametrize("name,argv,key", BAD, ids=[b[0] for b in BAD])
def test_bad_input_table(tmp_path, name, argv, key):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("a researcher's notes")
  before = _snapshot(str(workdir))
  code, err = run_launcher(["--config=configs/quickstart.py", f"--workdir={workdir}", *argv])
  assert code not in (0, None), err
  message = [line for line in err.strip().splitlines() if line.startswith("lbjax: error:")]
  assert len(message) == 1 and key in message[0], err
  if not name.startswith("unknown") or "key" not in name:
    assert "unknown flag or config key" not in message[0], err
  assert "Traceback" not in err
  assert _snapshot(str(workdir)) == before


def test_workdir_checks(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  code, err = run_launcher(["--config=configs/quickstart.py", f"--workdir={blocker}/run"])
  assert code == 1 and "--workdir" in err
  # A workdir holding a run of another config is refused and left as it was.
  workdir = tmp_path / "other"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"seed": 1, "batch_size": 4096}')
  before = _snapshot(str(workdir))
  code, err = run_launcher(["--config=configs/quickstart.py", f"--workdir={workdir}"])
  assert code == 1 and "--workdir" in err and "config.batch_size" in err
  assert _snapshot(str(workdir)) == before
