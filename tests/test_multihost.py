"""Two processes × 2 simulated devices (`jax.distributed` on localhost): every stop is agreed.

A signal to one process, at a random step, stops both at the same step with one checkpoint of
that step; rerunning both resumes and ends with the final line of an uninterrupted run. The
same for a SWAP run signalled in phase 2.
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import xla

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHORT = ["--config=configs/quickstart.py", "--config.num_epochs=2",
         "--config.schedule.warmup_epochs=0.0", "--config.progress_bar=False",
         "--config.batch_size=64", "--config.image_size=16", "--config.log_every_steps=2",
         "--config.checkpoint_every_steps=1000", "--config.eval_every_epochs=10"]
SWAP = ["--config=configs/swap_digits.py", "--config.num_epochs=2",
        "--config.schedule.warmup_epochs=0.5",
        "--config.swap.phase1_stop_accuracy=1.0", "--config.swap.num_epochs=0.5",
        "--config.swap.num_replicas=4", "--config.swap.batch_size=32", "--config.image_size=8",
        "--config.progress_bar=False", "--config.log_every_steps=2",
        "--config.checkpoint_every_steps=1000", "--config.eval_every_epochs=10"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch_pair(args, workdir, inject=None, script=None):
  """Both processes of a run on localhost; ``inject`` maps a process index to the ``(errno,
  step)`` its ``script`` (`tests.test_ownership.INJECT`) fails orbax's write of that step with."""
  inject = inject or {}
  env = xla.process_env(2)
  port = _free_port()
  launch = lambda i: (["-c", script, *map(str, inject[i])] if i in inject
                      else ["-m", "lbjax.main"])
  return [subprocess.Popen(
      [sys.executable, *launch(i), *args, f"--workdir={workdir}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def _finish(procs, timeout):
  """Each process's stdout, then ``--- stderr ---`` and its stderr (its last lines)."""
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=timeout)
      outs.append(f"{out}\n--- stderr ---\n{err[-3000:]}")
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise AssertionError(f"a process did not exit within {timeout} s (deadlock)") from None
  return outs


def _logged_step(path):
  """The last step in ``metrics.jsonl`` (0 before any)."""
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except OSError:
    return 0
  steps = [json.loads(line)["step"] for line in lines if line.strip().endswith("}")]
  return max(steps, default=0)


def _signal_at(procs, metrics_path, target, victim, deadline=400):
  """SIGTERM to ``procs[victim]`` once ``metrics_path`` has logged step ``target``."""
  start = time.time()
  while _logged_step(metrics_path) < target:
    if any(p.poll() is not None for p in procs):
      raise AssertionError("a process ended before the signal")
    if time.time() - start > deadline:
      raise AssertionError("training did not reach the signal step")
    time.sleep(0.05)
  procs[victim].send_signal(signal.SIGTERM)
  return time.time()


def _status(path):
  with open(os.path.join(path, "status.json")) as f:
    return json.load(f)


def _checkpoint_steps(path):
  return sorted(int(n) for n in os.listdir(path) if n.isdigit())


def _last_line(out):
  """The last line the process printed on stdout."""
  return out.split("\n--- stderr ---\n")[0].strip().splitlines()[-1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """``uninterrupted(name)``: the final line of both processes of an uninterrupted run of
  ``name`` ("normal" or "swap"), run once per module."""
  lines = {}

  def final_line(name):
    if name not in lines:
      args = {"normal": SHORT, "swap": SWAP}[name]
      procs = _launch_pair(args, str(tmp_path_factory.mktemp(name)))
      outs = _finish(procs, timeout=900)
      assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:]
      assert _last_line(outs[0]) == _last_line(outs[1]), outs[0][-2000:]
      assert _last_line(outs[0]).startswith("final test accuracy: "), outs[0][-3000:]
      lines[name] = _last_line(outs[0])
    return lines[name]

  return final_line


@pytest.mark.parametrize("victim", [1, 0])
def test_sigterm_to_one_process_stops_both_at_one_checkpoint_and_resumes(tmp_path, victim,
                                                                        uninterrupted):
  rng = np.random.default_rng(victim)
  target = int(rng.integers(4, 30))  # of 45 steps; logged every 2
  workdir = str(tmp_path / "run")
  procs = _launch_pair(SHORT, workdir)
  sent = _signal_at(procs, os.path.join(workdir, "metrics.jsonl"), target, victim)
  outs = _finish(procs, timeout=60)
  assert time.time() - sent < 60
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
    assert "preempted at step" in out, out[-3000:]
  status = _status(workdir)
  assert status["status"] == "preempted", status
  step = status["step"]
  assert target <= step < 45
  # One checkpoint, of the step both stopped at (the cadence would save none before the end).
  assert _checkpoint_steps(os.path.join(workdir, "checkpoints")) == [step]
  assert all(f"preempted at step {step};" in out for out in outs)

  procs = _launch_pair(SHORT, workdir)
  outs = _finish(procs, timeout=900)
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:]
  for p_out in outs:
    assert f"resuming from step {step}" in p_out, p_out[-3000:]
    assert _last_line(p_out) == uninterrupted("normal")
  assert _status(workdir)["status"] == "completed"


def test_sigterm_in_swap_phase2_stops_both_and_resumes(tmp_path, uninterrupted):
  workdir = str(tmp_path / "swap")
  procs = _launch_pair(SWAP, workdir)
  # Phase 2's metrics are the run's own metrics.jsonl (phase 1 writes phase1/metrics.jsonl).
  _signal_at(procs, os.path.join(workdir, "metrics.jsonl"), 6, victim=1)
  outs = _finish(procs, timeout=60)
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  status = _status(workdir)
  assert status["status"] == "preempted" and status["phase"] == 2, status
  step = status["step"]
  assert _checkpoint_steps(os.path.join(workdir, "phase2", "checkpoints")) == [0, step]
  procs = _launch_pair(SWAP, workdir)
  outs = _finish(procs, timeout=900)
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:]
  for out in outs:
    assert _last_line(out) == uninterrupted("swap"), out[-3000:]


def test_hpo_trial_pruned_on_two_processes_stops_both(tmp_path):
  """An HPO study on 2 processes: process 0 asks the study, both train the trial; the pruner
  (answered on process 0, broadcast) stops both at the trial's first evaluation."""
  env = xla.process_env(2)
  port, workdir = _free_port(), str(tmp_path / "hpo")
  args = ["--config=configs/seed002_sgd.py:bs=128,data=digits", "--study=s", "--trials=1",
          f"--workdir={workdir}", "--config.batch_size=32", "--config.image_size=16",
          "--config.augment=normalize", "--config.num_epochs=0.98",
          "--config.eval_every_epochs=0.5", "--config.log_every_steps=10",
          "--config.hpo.pruner=threshold", "--config.hpo.pruner_threshold=0.999",
          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  procs = [subprocess.Popen([sys.executable, "-m", "lbjax.hpo", *args, f"--process_id={i}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = _finish(procs, timeout=600)
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "1 pruned" in outs[0], outs[0][-3000:]
  assert "ran 1 trial(s) of process 0" in outs[1], outs[1][-3000:]
  trial_dir = os.path.join(workdir, "s", "trial_0")
  status = _status(trial_dir)
  # Stopped at the first evaluation (0.5 epoch of 40 steps) on both processes; the finished
  # trial's checkpoints are removed (keep_trial_checkpoints=False).
  assert status["status"] == "stopped" and status["step"] == 20, status
  assert all("stopped by the callback at step 20" in out for out in outs), outs[1][-3000:]
  assert not os.path.exists(os.path.join(trial_dir, "checkpoints"))


def test_storage_failure_on_one_process_ends_both_with_exit_4(tmp_path, uninterrupted):
  """ENOSPC in process 0's asynchronous save of the step-20 checkpoint (process 0 writes the
  checkpoint's files; process 1 waits for it in orbax's barrier): both processes exit 4 within
  the configured ``checkpoint_timeout_secs`` with one ``lbjax: error:`` line and status
  ``failed`` at the last complete checkpoint; rerunning both resumes from it and ends with the
  final line of an uninterrupted run."""
  from tests.test_ownership import INJECT  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  args = [*SHORT, "--config.checkpoint_every_steps=10", "--config.checkpoint_timeout_secs=20"]
  procs = _launch_pair(args, workdir, inject={0: (errno.ENOSPC, 20)}, script=INJECT)
  start = time.time()
  outs = _finish(procs, timeout=300)
  assert time.time() - start < 300
  for p, out in zip(procs, outs):
    assert p.returncode == 4, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("lbjax: error:")]
    assert len(errors) == 1, out[-3000:]
    assert "Traceback" not in out.split("--- stderr ---")[1], out[-3000:]
  assert "No space left on device" in outs[0], outs[0][-3000:]
  status = _status(workdir)
  assert status["status"] == "failed" and status["checkpoint_step"] == 10, status
  assert _checkpoint_steps(os.path.join(workdir, "checkpoints")) == [10]

  procs = _launch_pair(args, workdir)
  outs = _finish(procs, timeout=900)
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:]
  for out in outs:
    assert "resuming from step 10 " in out, out[-3000:]
    assert _last_line(out) == uninterrupted("normal")
