"""Who owns a workdir, and what a failed write of it tells the user.

**One owner.** The process that writes a workdir (process 0 of a multi-host run) holds an OS lock
(``fcntl.flock``, exclusive) on ``WORKDIR/.lock`` for the run's life. A second process on the
same workdir gets `WorkdirInUse` at once, before it writes anything: ``--workdir: in use by
process PID on HOST since TIME``. The kernel drops a ``flock`` when its holder dies (``kill -9``,
a crash, a lost node), so a lock left by a dead process never blocks and no pid is guessed stale.
The pid, host and start time written into the file are only for the message.

**Failures of the machine.** `classify` recognises an ``OSError`` of the storage
(``ENOSPC``, ``EDQUOT``, ``EACCES``, ``EROFS``, ``EIO``, also when a library such as orbax wraps
it in its own exception) and `writing` turns it into `WriteFailure`, which names what was being
written; the runner adds the last complete checkpoint and ends the run with status ``failed``.
`quiet_storage_errors` keeps the libraries' own reports of that error (orbax's and asyncio's
error logs, tensorstore's late completions of the failed save's other writes) off stderr, so the
launcher's line is the one the user reads.
"""

from collections.abc import Iterator
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import traceback

from typing_extensions import Self

from lbjax.errors import ConfigError

LOCK_FILE = ".lock"

# errno -> the OS's words for it, for errors whose text a library may have flattened.
STORAGE_ERRNOS = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EACCES: "Permission denied",
    errno.EROFS: "Read-only file system",
    errno.EIO: "Input/output error",
    # A save that did not finish on every process in time (`lbjax.checkpoint.Checkpointer.wait`).
    errno.ETIMEDOUT: "Connection timed out",
}


class WorkdirInUse(ConfigError):
  """Another live process holds the workdir's lock."""

  def __init__(self, workdir: str, owner: dict):
    self.workdir = workdir
    self.owner = owner
    super().__init__("--workdir", f"in use by process {owner.get('pid', '?')} on "
                     f"{owner.get('host', '?')} since {owner.get('since', '?')} ({workdir})")


class WriteFailure(Exception):
  """A write of the run's files failed for a reason of the machine (disk full, permissions...).

  The run's `lbjax.loop.Recorder` fills in ``checkpoint_step`` (the newest complete checkpoint,
  None if there is none), ``step`` (the step the run had reached) and, when ``status.json``
  could not be written either, ``status_error``; the launcher prints `line` and exits with
  `EXIT_CODE`.
  """

  EXIT_CODE = 4

  def __init__(self, what: str, reason: str):
    self.what = what
    self.reason = reason
    self.checkpoint_step: int | None = None
    self.step: int | None = None
    self.status_error: str | None = None
    self.workdir: str | None = None  # whose status.json says failed (None: not written yet)
    self.recorded = False  # the status file has been dealt with (written, or its failure noted)
    super().__init__(f"{what}: {reason}")

  def line(self) -> str:
    """``<what>: <reason>; the last complete checkpoint is step N; rerun to resume``."""
    if self.checkpoint_step is None:
      return f"{self.what}: {self.reason}; there is no complete checkpoint; rerun to start again"
    return (f"{self.what}: {self.reason}; the last complete checkpoint is step "
            f"{self.checkpoint_step}; rerun to resume")


class WorkdirLock:
  """An exclusive ``flock`` on ``WORKDIR/.lock``, held from `acquire` to `release`.

  Example:
    >>> with WorkdirLock(workdir):   # raises WorkdirInUse if another process runs there
    ...   train(...)
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  @staticmethod
  def owner(workdir: str) -> dict:
    """The pid, host and start time the holder wrote (empty if unreadable)."""
    try:
      with open(os.path.join(workdir, LOCK_FILE)) as f:
        return json.loads(f.read() or "{}")
    except (OSError, ValueError):
      return {}

  def acquire(self) -> Self:
    """Takes the lock, creating the workdir if needed; `WorkdirInUse` if a live process has it.

    The lock file is opened without truncation, so a refused process changes nothing; the
    holder writes its identity only once it holds the lock.
    """
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise WorkdirInUse(self.workdir, self.owner(self.workdir)) from None
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since})
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> Self:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def in_use(workdir: str) -> dict | None:
  """The owner of ``workdir`` if a live process holds its lock, else None (nothing is written).

  For the sweep runner and HPO workers, which skip such a run instead of failing.
  """
  path = os.path.join(workdir, LOCK_FILE)
  if not os.path.exists(path):
    return None
  fd = os.open(path, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return WorkdirLock.owner(workdir) or {"pid": "?"}
  finally:
    os.close(fd)  # closing drops a lock this probe took
  return None


def classify(exc: BaseException) -> str | None:
  """The OS reason (e.g. ``No space left on device``) if ``exc`` is, or wraps, a storage error.

  Looks through ``__cause__`` and ``__context__`` (`_chain`) for an ``OSError`` with one of
  `STORAGE_ERRNOS`; libraries that re-raise with only the text (orbax's ``RESOURCE_EXHAUSTED: ... No space left on
  device``) are recognised by the OS's own words in the message.
  """
  for e in _chain(exc):
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
      return e.strerror or STORAGE_ERRNOS[e.errno]
    text = str(e)
    for reason in STORAGE_ERRNOS.values():
      if reason in text:
        return reason
  return None


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
  """``exc`` and every exception it was raised from or while handling (``__cause__`` and
  ``__context__``, both followed), each once."""
  stack, seen = [exc], set()
  while stack:
    e = stack.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    stack += [e.__context__, e.__cause__]


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
  """Turns a storage error raised inside into `WriteFailure` (``what`` names the file)."""
  try:
    yield
  except WriteFailure:
    raise
  except Exception as e:  # classify decides; anything else is re-raised
    reason = classify(e)
    if reason is None:
      raise
    raise WriteFailure(what, reason) from e


# The error of orbax's barrier when a save did not finish on every process in time, which
# `lbjax.checkpoint.Checkpointer.wait` reports as ``ETIMEDOUT`` (a storage failure elsewhere).
BARRIER_TIMEOUT = "DEADLINE_EXCEEDED: Barrier timed out"


def is_barrier_timeout(exc: BaseException) -> bool:
  """Whether ``exc`` is, or was raised from, orbax's barrier timing out (`BARRIER_TIMEOUT`)."""
  return any(BARRIER_TIMEOUT in str(e) for e in _chain(exc))


class _StorageErrorLogFilter(logging.Filter):
  """Drops the error logs of a storage error that the run reports as `WriteFailure`, in one
  line: orbax's (tracebacks of its background save threads, also of a save's barrier timed out
  by another process's failure) and asyncio's ``Task exception was never retrieved`` (the
  failed save's other writes, when garbage-collected)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    if record.name != "asyncio" and f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    if record.exc_info and record.exc_info[1] is not None and (
        classify(record.exc_info[1]) or is_barrier_timeout(record.exc_info[1])):
      return False
    message = record.getMessage()
    return classify(Exception(message)) is None and not is_barrier_timeout(Exception(message))


def is_late_completion(exc: BaseException, tb, obj) -> bool:
  """Whether an unraisable exception is a native future's completion arriving after its event
  loop was closed.

  When one write of an orbax save fails (a full disk), orbax's background event loop ends with
  that error and is closed while tensorstore's other writes of the same, already failed save
  are still in flight; each of them, on completing, calls the closed loop's
  ``call_soon_threadsafe`` from native code, which raises ``RuntimeError('Event loop is
  closed')`` with no Python caller (tensorstore reports it as unraisable, ``object`` None). The
  save's failure itself reaches the run through orbax (`WriteFailure`); these carry nothing
  more. Recognised exactly: that error, raised in asyncio's ``call_soon_threadsafe`` as the
  outermost frame.
  """
  if type(exc) is not RuntimeError or str(exc) != "Event loop is closed" or obj is not None:
    return False
  frames = traceback.extract_tb(tb)
  return bool(frames) and frames[0].name == "call_soon_threadsafe" and (
      frames[0].filename.endswith(os.path.join("asyncio", "base_events.py")))


class _LateCompletionHook:
  """``sys.unraisablehook`` that drops `is_late_completion` reports (logged at INFO, counted
  in ``dropped``) and passes every other one to the hook it replaced."""

  def __init__(self, previous):
    self.previous = previous
    self.dropped = 0

  def __call__(self, args) -> None:
    if is_late_completion(args.exc_value, args.exc_traceback, args.object):
      self.dropped += 1
      logging.getLogger(__name__).info("dropped a write's completion that arrived after its "
                                       "event loop was closed (%d so far)", self.dropped)
      return
    self.previous(args)


def quiet_storage_errors(logger: logging.Logger | None = None) -> None:
  """Keeps a storage error to the launcher's one line: installs the filter on absl's logger
  (orbax logs there) and asyncio's, and `_LateCompletionHook` as ``sys.unraisablehook`` (the
  completions of a failed save's other writes). Idempotent; the launcher calls it."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  for log in (logger or absl_logging.get_absl_logger(), logging.getLogger("asyncio")):
    if not any(isinstance(f, _StorageErrorLogFilter) for f in log.filters):
      log.addFilter(_StorageErrorLogFilter())
  if not isinstance(sys.unraisablehook, _LateCompletionHook):
    sys.unraisablehook = _LateCompletionHook(sys.unraisablehook)
