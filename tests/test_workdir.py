"""The workdir lock (one owner, a dead owner never blocks) and the storage-error classifier."""

import asyncio
import builtins
import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
import types

import ml_collections
import pytest
import tensorstore as ts

from lbjax import loop
from lbjax import main
from lbjax import metrics as metrics_lib
from lbjax import workdir as workdir_lib

HOLDER = textwrap.dedent("""
    import sys, time
    from lbjax import workdir
    lock = workdir.WorkdirLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def _hold(path):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_owner_is_refused_and_dead_owner_never_blocks(tmp_path):
  path = str(tmp_path / "run")
  proc = _hold(path)
  try:
    lock_file = os.path.join(path, ".lock")
    with open(lock_file) as f:
      before = sorted(os.listdir(path)), f.read()
    assert workdir_lib.in_use(path)["pid"] == proc.pid
    with pytest.raises(workdir_lib.WorkdirInUse) as e:
      workdir_lib.WorkdirLock(path).acquire()
    assert e.value.key == "--workdir"
    assert f"in use by process {proc.pid} on " in str(e.value)
    # The refused attempt changed nothing.
    with open(lock_file) as f:
      assert (sorted(os.listdir(path)), f.read()) == before
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  # The kernel released the dead holder's flock: no stale lock.
  assert workdir_lib.in_use(path) is None
  with workdir_lib.WorkdirLock(path) as lock:
    assert workdir_lib.WorkdirLock.owner(path)["pid"] == os.getpid()
    assert lock.path == os.path.join(path, ".lock")
  assert workdir_lib.in_use(path) is None


def test_in_use_of_a_fresh_workdir_writes_nothing(tmp_path):
  path = str(tmp_path / "absent")
  assert workdir_lib.in_use(path) is None
  assert not os.path.exists(path)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO])
def test_writing_turns_storage_errors_into_one_failure(code):
  with pytest.raises(workdir_lib.WriteFailure) as e, workdir_lib.writing("checkpoint step 100"):
    try:
      raise OSError(code, os.strerror(code))
    except OSError as inner:  # wrapped, as orbax does
      raise RuntimeError("RESOURCE_EXHAUSTED: write failed") from inner
  assert e.value.what == "checkpoint step 100"
  assert e.value.reason == os.strerror(code)


def test_flattened_message_is_recognised_and_other_errors_pass_through():
  assert workdir_lib.classify(ValueError("RESOURCE_EXHAUSTED: ...: No space left on device")) == (
      "No space left on device")
  assert workdir_lib.classify(OSError(errno.ENOENT, "No such file or directory")) is None
  with pytest.raises(KeyError), workdir_lib.writing("metrics"):
    raise KeyError("a bug, not the disk")


def test_late_completions_of_a_failed_save_are_dropped_and_other_unraisables_kept(monkeypatch):
  """A tensorstore future completing after the event loop awaiting it was closed (what the
  other writes of a save failed by a full disk do) is dropped; any other unraisable exception,
  the same error from Python code included, reaches the previous hook."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  for log in (logging.getLogger("absl"), logging.getLogger("asyncio")):  # filters restored after
    monkeypatch.setattr(log, "filters", list(log.filters))
  workdir_lib.quiet_storage_errors()
  workdir_lib.quiet_storage_errors()  # idempotent: one hook, not two
  hook = sys.unraisablehook
  assert isinstance(hook, workdir_lib._LateCompletionHook) and hook.previous == seen.append

  promise, future = ts.Promise.new()

  async def wait():
    await future

  event_loop = asyncio.new_event_loop()
  task = event_loop.create_task(wait())
  event_loop.run_until_complete(asyncio.sleep(0.01))  # the task now awaits the tensorstore future
  event_loop.close()
  promise.set_result(1)  # tensorstore calls the closed loop's call_soon_threadsafe
  assert hook.dropped == 1 and seen == [], seen
  del task

  event_loop = asyncio.new_event_loop()
  event_loop.close()
  try:
    event_loop.call_soon_threadsafe(print)  # the same error, raised with a Python caller
  except RuntimeError as e:
    err = e
  hook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=err,
                             exc_traceback=err.__traceback__, err_msg=None, object=None))
  other = ValueError("Event loop is closed")
  hook(types.SimpleNamespace(exc_type=ValueError, exc_value=other, exc_traceback=None,
                             err_msg=None, object=None))
  assert [a.exc_value for a in seen] == [err, other] and hook.dropped == 1


def test_storage_error_logs_of_orbax_and_asyncio_are_dropped_others_kept():
  log_filter = workdir_lib._StorageErrorLogFilter()
  full = ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']")

  def record(name, path, exc, level=logging.ERROR):
    return logging.LogRecord(name, level, path, 1, "Task exception was never retrieved", (),
                             (type(exc), exc, None))

  asyncio_path = os.path.join("asyncio", "base_events.py")
  orbax_path = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "x.py")
  assert not log_filter.filter(record("asyncio", asyncio_path, full))
  assert not log_filter.filter(record("absl", orbax_path, full))
  assert log_filter.filter(record("asyncio", asyncio_path, KeyError("a bug")))
  assert log_filter.filter(record("absl", "/work/lbjax/loop.py", full))  # not a library's log
  assert log_filter.filter(record("asyncio", asyncio_path, full, level=logging.WARNING))


def test_a_status_file_that_cannot_be_written_is_said_on_stderr(tmp_path, monkeypatch):
  """Issue 19 item 2: the workdir turns read-only mid-run. The failed write is reported in one
  line; the status file, which cannot say ``failed`` now, keeps its last status, and the
  launcher says so in a second line."""
  workdir = str(tmp_path / "run")
  rec = loop.Recorder(workdir, keep=2, primary=True, async_save=False)
  rec.write_status("running", 7)
  real_open = builtins.open

  def read_only(path, mode="r", *args, **kwargs):  # EROFS for every write, reads pass
    if any(m in mode for m in "wax+"):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return real_open(path, mode, *args, **kwargs)

  monkeypatch.setattr(builtins, "open", read_only)
  with pytest.raises(workdir_lib.WriteFailure) as e:
    rec.write_config(ml_collections.ConfigDict({"seed": 0}))
  monkeypatch.undo()
  reason = os.strerror(errno.EROFS)
  assert e.value.status_error == reason
  assert metrics_lib.read_status(workdir) == {"status": "running", "step": 7,
                                              "checkpoint_step": None}
  config_path = os.path.join(workdir, "config.json")
  assert main.failure_lines(e.value) == [
      (f"lbjax: error: config in {config_path}: {reason}; there is no complete checkpoint; "
       "rerun to start again"),
      f"lbjax: error: status.json could not be written either ({reason}); it does not say failed"]
