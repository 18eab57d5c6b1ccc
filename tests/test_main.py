"""The launcher end to end, as a user runs it: quickstart, resume, bad input, two hosts."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests import xla
from tests.hang import HANG_SECONDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, devices=4, env_extra=None, background=False):
  env = xla.process_env(devices, **(env_extra or {}))
  cmd = [sys.executable, "-m", "lbjax.main", *args]
  if background:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_SECONDS,
                        check=False)


def test_quickstart_reaches_090_and_a_rerun_resumes(tmp_path):
  workdir = str(tmp_path / "quickstart")
  run = launch("--config=configs/quickstart.py", f"--workdir={workdir}",
               "--config.progress_bar=False", devices=1, env_extra=xla.OPTIMIZED)
  assert run.returncode == 0, run.stderr[-3000:]
  last = run.stdout.strip().splitlines()[-1]
  assert last.startswith("final test accuracy: ")
  accuracy = float(last.split(": ")[1].split()[0])
  assert accuracy >= 0.90
  result = _status(workdir)["result_test_accuracy"]
  assert last == f"final test accuracy: {result:.4f} (trained weights)"
  again = launch("--config=configs/quickstart.py", f"--workdir={workdir}",
                 "--config.progress_bar=False", devices=1, env_extra=xla.OPTIMIZED)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from step" in again.stdout
  assert again.stdout.strip().splitlines()[-1] == last


def _status(workdir):
  with open(os.path.join(workdir, "status.json")) as f:
    return json.load(f)


def test_swa_quickstart_last_line_is_the_swa_average(tmp_path):
  """Issue 26 item 4: the last line names the model the run reports and gives its accuracy, the
  number of ``result_test_accuracy`` (the SWA average, not the trained weights)."""
  workdir = str(tmp_path / "swa")
  run = launch("--config=configs/quickstart.py", f"--workdir={workdir}",
               "--config.progress_bar=False", "--config.swa.enabled=True",
               "--config.swa.start_epoch=10", devices=1, env_extra=xla.OPTIMIZED)
  assert run.returncode == 0, run.stderr[-3000:]
  status = _status(workdir)
  assert status["result_test_accuracy"] == status["swa_test_accuracy"]
  last = run.stdout.strip().splitlines()[-1]
  assert last == (f"final test accuracy: {status['result_test_accuracy']:.4f} "
                  "(SWA average, BatchNorm recomputed)")
  assert status["result_test_accuracy"] >= 0.90


def _snapshot(path):
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = f.read()
  return out


def test_bad_input_in_a_real_process_names_the_key_and_leaves_the_workdir(tmp_path):
  """The table of bad inputs is tests/test_reliability.py:BAD (run in-process); this is the
  same path as a real process on 4 devices: exit status, one stderr line, workdir untouched."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("a researcher's notes")
  before = _snapshot(str(workdir))
  key = "config.batch_size"
  run = launch("--config=configs/quickstart.py", f"--workdir={workdir}", "--config.batch_size=30",
               devices=4)
  assert run.returncode != 0
  assert key in run.stderr, run.stderr[-2000:]
  assert "Traceback" not in run.stderr
  assert _snapshot(str(workdir)) == before


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _params(workdir):
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top

  from lbjax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.latest_step()
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  tree = ckpt._manager.restore(step, args=ocp.args.StandardRestore())  # pylint: disable=protected-access
  ckpt.close()
  return step, jax.tree.leaves(tree["params"])


def test_two_processes_match_one_process(tmp_path):
  short = ["--config=configs/quickstart.py", "--config.num_epochs=0.5", "--config.schedule.warmup_epochs=0.0",
           "--config.progress_bar=False", "--config.batch_size=64", "--config.image_size=16"]
  single = str(tmp_path / "single")
  run = launch(*short, f"--workdir={single}", devices=2)
  assert run.returncode == 0, run.stderr[-3000:]

  multi = str(tmp_path / "multi")
  port = _free_port()
  procs = [launch(*short, f"--workdir={multi}", f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}", devices=1, background=True)
           for i in range(2)]
  outs = [p.communicate(timeout=HANG_SECONDS)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  # Both processes evaluated the same global model on their shards and agree.
  assert outs[0].strip().splitlines()[-1] == outs[1].strip().splitlines()[-1]
  step_a, a = _params(single)
  step_b, b = _params(multi)
  assert step_a == step_b
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


def test_simulated_devices_get_a_thread_pool_that_cannot_deadlock():
  """Importing lbjax with simulated CPU devices sizes XLA's pool (NPROC) unless already set."""
  code = "import os; import lbjax; print(os.environ.get('NPROC'))"
  def run(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("NPROC", "XLA_FLAGS")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()
  assert run(XLA_FLAGS="--xla_force_host_platform_device_count=4") == "16"
  assert run(XLA_FLAGS="--xla_force_host_platform_device_count=4", NPROC="3") == "3"
  assert run() == "None"
