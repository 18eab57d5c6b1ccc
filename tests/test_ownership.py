"""Issue 19: one owner per workdir, storage failures in one line with a true status.

Runs go through the launcher in subprocesses (`tests.test_reliability.start`, 2 simulated
devices); a disk fault is a real full tmpfs where this process is root with `mount` (CI; a
failed mount there fails the test), otherwise an OSError injected at orbax's writer; a
permission fault is always injected (root ignores file modes).
"""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from lbjax import metrics as metrics_lib
from lbjax import workdir as workdir_lib
from tests import xla
from tests.hang import HANG_SECONDS
from tests.test_reliability import ROOT
from tests.test_reliability import assert_bit_identical
from tests.test_reliability import checkpoint_steps
from tests.test_reliability import final_params
from tests.test_reliability import run_launcher
from tests.test_reliability import start
from tests.test_reliability import wait_for_checkpoint
from tests.test_workdir import _hold

SHORT = ["--config.num_epochs=0.9"]  # 40 steps, checkpoints every 10

# Runs the launcher with orbax's commit write of one step failing (in orbax's background thread,
# so the error surfaces at the next save): argv[1] = errno, argv[2] = step, the rest the flags.
INJECT = textwrap.dedent("""
    import sys
    from orbax.checkpoint._src.path import async_path
    code, step = int(sys.argv.pop(1)), sys.argv.pop(1)
    real = async_path.write_text
    async def write_text(path, text):
      if f"/{step}.orbax-checkpoint-tmp" in str(path):
        import os
        raise OSError(code, os.strerror(code), str(path))
      return await real(path, text)
    async_path.write_text = write_text
    from absl import app
    from lbjax import main
    app.run(main.main, flags_parser=main.parse_flags)
""")


def _env():
  return xla.process_env(2)


def _launch_injected(workdir, code, step):
  from tests.test_reliability import FAST  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, "-c", INJECT, str(code), str(step), *FAST, *SHORT,
                         f"--workdir={workdir}"], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=HANG_SECONDS, check=False)


def _finish(workdir):
  proc = start(workdir, *SHORT)
  out = proc.communicate(timeout=HANG_SECONDS)[0]
  assert proc.returncode == 0, out[-3000:]
  return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  _finish(workdir)
  return workdir


def _assert_failed_then_resumes(workdir, reference, returncode, stderr, reason, failed_step):
  assert returncode == 4, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.startswith("lbjax: error:")]
  assert len(lines) == 1, stderr[-3000:]
  good = max(s for s in checkpoint_steps(workdir))
  assert good < failed_step
  assert re.fullmatch(rf"lbjax: error: checkpoint step {failed_step} in \S+: {reason}; the last "
                      rf"complete checkpoint is step {good}; rerun to resume", lines[0]), lines[0]
  status = metrics_lib.read_status(workdir)
  assert status["status"] == "failed" and status["checkpoint_step"] == good
  assert reason in status["error"]
  # The complete checkpoint is readable; the half-written one is a temporary directory...
  ckpt = os.path.join(workdir, "checkpoints")
  assert any(".orbax-checkpoint-tmp" in n for n in os.listdir(ckpt)), os.listdir(ckpt)
  out = _finish(workdir)
  assert f"resuming from step {good} " in out
  # ...which the next start deletes.
  assert not any(".orbax-checkpoint-tmp" in n for n in os.listdir(ckpt)), os.listdir(ckpt)
  assert metrics_lib.read_status(workdir)["status"] == "completed"
  step_a, a = final_params(reference)
  step_b, b = final_params(workdir)
  assert step_a == step_b
  assert_bit_identical(a, b)
  assert (metrics_lib.read_status(workdir)["test_accuracy"]
          == metrics_lib.read_status(reference)["test_accuracy"])


# Which disk the disk-full test fills, fixed before it runs and named in its id
# (``test_disk_full_during_a_checkpoint[tmpfs]`` or ``[injected]``): a real tmpfs wherever this
# process is root and has `mount` (as in CI), where mounting it must then work; an ENOSPC
# injected at orbax's writer elsewhere (a developer's account).
DISK = "tmpfs" if os.geteuid() == 0 and shutil.which("mount") else "injected"


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                         capture_output=True, text=True, check=False)
  assert mount.returncode == 0, (
      f"root with `mount`, yet mounting a tmpfs on {path} failed (the disk-full test must use a "
      f"real tmpfs here, not the injected error): {mount.stderr.strip()}")
  assert os.path.ismount(path)


@pytest.mark.parametrize("disk", [DISK])
def test_disk_full_during_a_checkpoint(tmp_path, reference, disk):
  """ENOSPC at the checkpoint of step 20: a real 800 KB tmpfs under the checkpoints (one
  checkpoint is ~520 KB), or an ENOSPC injected at orbax's writer (`DISK` says which)."""
  workdir = str(tmp_path / "run")
  print(f"disk-full test: {disk}")
  if disk == "tmpfs":
    checkpoints = os.path.join(workdir, "checkpoints")
    _mount_tmpfs(checkpoints, "800k")
    try:
      proc = start(workdir, *SHORT)
      out = proc.communicate(timeout=HANG_SECONDS)[0]
      # Free space (a quota raised), then rerun in the same workdir.
      subprocess.run(["mount", "-o", "remount,size=16m", checkpoints], check=True)
      _assert_failed_then_resumes(workdir, reference, proc.returncode, out,
                                  "No space left on device", 20)
    finally:
      subprocess.run(["umount", checkpoints], check=False)
  else:
    run = _launch_injected(workdir, errno.ENOSPC, 20)
    _assert_failed_then_resumes(workdir, reference, run.returncode, run.stderr,
                                "No space left on device", 20)


def test_permission_denied_during_an_asynchronous_checkpoint(tmp_path, reference):
  """EACCES at orbax's commit of step 20, in its background thread: it surfaces at the next
  save and is reported as the write of step 20."""
  workdir = str(tmp_path / "run")
  run = _launch_injected(workdir, errno.EACCES, 20)
  _assert_failed_then_resumes(workdir, reference, run.returncode, run.stderr,
                              "Permission denied", 20)


def test_second_process_on_a_workdir_is_refused_and_the_first_finishes(tmp_path):
  workdir = str(tmp_path / "run")
  first = start(workdir, "--config.num_epochs=3")
  wait_for_checkpoint(first, workdir, 10)
  code, err = run_launcher([*_fast(), "--config.num_epochs=3", f"--workdir={workdir}"])
  assert first.poll() is None  # the refusal happened while the first one ran
  lines = [line for line in err.strip().splitlines() if line.startswith("lbjax: error:")]
  assert code == 1 and len(lines) == 1, err
  assert lines[0].startswith(f"lbjax: error: --workdir: in use by process {first.pid} on "), err
  assert "Traceback" not in err
  out = first.communicate(timeout=HANG_SECONDS)[0]
  assert first.returncode == 0, out[-3000:]
  records = metrics_lib.read_metrics(workdir)
  train_steps = [r["step"] for r in records if "train_loss" in r]
  status = metrics_lib.read_status(workdir)
  assert train_steps == sorted(set(train_steps)) and train_steps[-1] == status["total_steps"]
  assert status["status"] == "completed" and status["checkpoint_step"] == status["total_steps"]
  assert workdir_lib.in_use(workdir) is None


def _fast():
  from tests.test_reliability import FAST  # pylint: disable=g-import-not-at-top
  return FAST


def test_a_run_killed_without_a_status_is_reported_at_the_next_start(tmp_path, reference):
  workdir = str(tmp_path / "run")
  proc = start(workdir, *SHORT)
  wait_for_checkpoint(proc, workdir, 20)
  proc.kill()
  proc.wait()
  status = metrics_lib.read_status(workdir)
  assert status["status"] == "running"
  # Written with each checkpoint: the step reached and the newest checkpoint known complete.
  assert status["step"] >= 20 and status["checkpoint_step"] in (None, *checkpoint_steps(workdir))
  out = _finish(workdir)
  assert (f"lbjax: the previous run in {workdir} ended without a status at step "
          f"\N{GREATER-THAN OR EQUAL TO} {status['step']}; resuming") in out
  assert_bit_identical(final_params(reference)[1], final_params(workdir)[1])


def test_sweep_skips_a_run_whose_workdir_is_in_use(tmp_path, capsys):
  from experiments import run as sweep_run  # pylint: disable=g-import-not-at-top
  config = os.path.join(ROOT, "tests", "tiny_sweep_config.py")
  root = tmp_path / "sweep"
  holder = _hold(str(root / "seed=0"))
  try:
    results = sweep_run.run_sweep(config, str(root))
  finally:
    holder.kill()
    holder.wait()
  out = capsys.readouterr().out
  assert f"seed=0: skipped, in use by process {holder.pid} on " in out
  assert results["seed=0"]["status"] == "in use" and results["seed=0"]["skipped"]
  assert results["seed=1"]["status"] == "completed"
  assert sorted(os.listdir(root / "seed=0")) == [".lock"]  # nothing of the skipped run written
  assert json.loads((root / "seed=1" / "status.json").read_text())["status"] == "completed"
