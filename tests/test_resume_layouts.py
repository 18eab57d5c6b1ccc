"""Checkpoints do not depend on the device count: a run signalled on 4 simulated devices resumes
on 1 and on 2 (a normal run, and SWAP in phase 2) and ends where the 4-device run ends."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import xla
from tests.test_multihost import _checkpoint_steps
from tests.test_multihost import _last_line
from tests.test_multihost import _logged_step
from tests.test_multihost import _status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NORMAL = ["--config=configs/quickstart.py", "--config.num_epochs=2",
          "--config.schedule.warmup_epochs=0.0", "--config.progress_bar=False",
          "--config.batch_size=64", "--config.image_size=16", "--config.log_every_steps=2",
          "--config.checkpoint_every_steps=1000", "--config.eval_every_epochs=10"]
SWAP = ["--config=configs/swap_digits.py", "--config.num_epochs=2",
        "--config.schedule.warmup_epochs=0.5", "--config.swap.phase1_stop_accuracy=1.0",
        "--config.swap.num_epochs=0.5", "--config.swap.num_replicas=4",
        "--config.swap.batch_size=32", "--config.image_size=8", "--config.progress_bar=False",
        "--config.log_every_steps=2", "--config.checkpoint_every_steps=1000",
        "--config.eval_every_epochs=10"]


def _launch(args, workdir, devices, background=False):
  env = xla.process_env(devices)
  cmd = [sys.executable, "-m", "lbjax.main", *args, f"--workdir={workdir}"]
  if background:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                       check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  return run.stdout


def _weights(checkpoints):
  step = max(_checkpoint_steps(checkpoints))
  with ocp.CheckpointManager(checkpoints) as manager:
    tree = manager.restore(step, args=ocp.args.StandardRestore())
  return step, jax.tree.leaves(tree["params"])


def _train_losses(workdir, after):
  """``{step: train_loss}`` of the training windows ``workdir`` logged after step ``after``."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return {r["step"]: r["train_loss"] for r in records if "train_loss" in r and r["step"] > after}


@pytest.mark.parametrize("name,args,checkpoints", [
    ("normal", NORMAL, "checkpoints"),
    ("swap", SWAP, os.path.join("phase3", "checkpoints"))])
def test_a_4_device_checkpoint_resumes_on_1_and_2_devices(tmp_path, name, args, checkpoints):
  whole = str(tmp_path / "whole")
  last = _last_line(_launch(args, whole, devices=4))
  step_w, weights = _weights(os.path.join(whole, checkpoints))

  cut = str(tmp_path / "cut")
  proc = _launch(args, cut, devices=4, background=True)
  metrics = os.path.join(cut, "metrics.jsonl")  # SWAP: phase 2's (phase 1 has its own)
  while _logged_step(metrics) < 6:
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0 and "preempted at step" in out, err[-3000:]
  status = _status(cut)
  assert status["status"] == "preempted", status
  for devices in (1, 2):
    again = str(tmp_path / f"on{devices}")
    shutil.copytree(cut, again)
    out = _launch(args, again, devices=devices)
    if name == "normal":
      assert f"resuming from step {status['step']}" in out
    # Every training window after the resume against the 4-device run's: the first (at most
    # three steps after the restore) within float32 rounding, so the restored state and the batch
    # stream are the 4-device run's; later ones within the drift of another summation order
    # (measured ≤ 1e-4 relative), far below the change of one different batch (a few %).
    # (A window covers the steps since the previous flush: after a resume at an odd step the
    # next window is one step long in the resumed run, two in the whole run; it is skipped.)
    after = _train_losses(again, status["step"] + 1)
    reference = _train_losses(whole, status["step"] + 1)
    assert after and list(after) == list(reference)[:len(after)], (after, reference)
    first = min(after)
    np.testing.assert_allclose(after[first], reference[first], rtol=1e-5)
    np.testing.assert_allclose(list(after.values()), [reference[s] for s in after], rtol=1e-3)
    step, resumed = _weights(os.path.join(again, checkpoints))
    assert step == step_w
    # The same drift on the final weights: measured up to 2.4e-4 on weights of ~0.04 after
    # the ~40 steps that follow the resume (1e-4 before; a 4-device rerun is bit-identical).
    for a, b in zip(weights, resumed):
      np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)
    # The reported accuracy agrees within a few of the 360 test examples: the run ends
    # undertrained (~40% for the normal run), with many examples near a decision boundary, and
    # the drift above flips some of them (measured: 0 to 2).
    assert abs(float(_last_line(out).split(": ")[1].split()[0])
               - float(last.split(": ")[1].split()[0])) <= 4 / 360 + 1e-9
