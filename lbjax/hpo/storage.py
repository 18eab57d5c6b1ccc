"""The study database: URLs shown without passwords, the budget lock, connections that survive a
database restart.

A study lives in an Optuna RDB storage: ``sqlite:///PATH`` on one host, ``postgresql://`` for
workers on many hosts. Passwords are never printed: every URL printed, logged or put into an
error goes through `shown` (SQLAlchemy's ``render_as_string(hide_password=True)``,
``postgresql://hpo:***@host:5432/hpo``), and error texts through `mask`. libpq reads a password
from ``~/.pgpass`` or ``PGPASSWORD`` when the URL has none, which keeps it off command lines.

A database restart in the middle of a study: `ReconnectingRDBStorage` retries every storage call
that failed on a lost connection, with exponential backoff (0.5 s doubling to 5 s) for at most
``config.hpo.reconnect_seconds``; the budget section (`budget_lock`) is never retried inside, the
worker redoes it whole (`lbjax.hpo.worker`).
"""

from collections.abc import Callable, Iterator
import contextlib
import fcntl
import functools
import os
import re
import threading
import time
from typing import Any
import warnings
import zlib

import optuna
import sqlalchemy

from lbjax.errors import ConfigError
from lbjax.errors import check_choice

# ``scheme://user:password@`` → ``scheme://user:***@`` in any text (also in URLs too malformed
# for SQLAlchemy to parse).
_PASSWORD_IN_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)\S*@")

# Seconds to wait between reconnection attempts: 0.5, 1, 2, 4, 5, 5, ...
_FIRST_DELAY, _MAX_DELAY = 0.5, 5.0

# libpq gives up on a host that does not answer after this many seconds.
_CONNECT_TIMEOUT = 10


def mask(text: str) -> str:
  """``text`` with the password of every ``scheme://user:password@`` in it replaced by ``***``."""
  return _PASSWORD_IN_URL.sub(r"\1***@", text)


def default_storage(workdir: str) -> str:
  return "sqlite:///" + os.path.abspath(os.path.join(workdir, "hpo.db"))


def parse(url: str) -> sqlalchemy.engine.URL:
  try:
    return sqlalchemy.engine.make_url(url)
  except (sqlalchemy.exc.ArgumentError, ValueError):
    raise ConfigError("--storage", f"not a database URL: {mask(url)!r}") from None


def shown(url: str) -> str:
  """``url`` as it may be printed: the password replaced by ``***`` (also the part after an
  unescaped ``@`` in it, which SQLAlchemy would read as the host)."""
  return mask(parse(url).render_as_string(hide_password=True))


def storage_url(url: str) -> str:
  """``url`` with the PostgreSQL driver made explicit: SQLAlchemy 2.1 maps ``postgresql://`` to
  psycopg 3, while requirements.txt pins psycopg2-binary."""
  parsed = parse(url)
  if parsed.drivername != "postgresql":
    return url
  return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def backend(url: str) -> str:
  return parse(url).get_backend_name()


def engine_kwargs(url: str) -> dict[str, Any]:
  """Pings pooled connections before use (a restarted server closed them) and bounds libpq's
  connection wait."""
  kwargs: dict[str, Any] = {"pool_pre_ping": True}
  if backend(url) == "postgresql":
    kwargs["connect_args"] = {"connect_timeout": _CONNECT_TIMEOUT}
  return kwargs


def is_connection_error(error: BaseException | None) -> bool:
  """Whether ``error`` (or an error it was raised from) is a lost or refused DB connection."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
      return True
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
      return True
    error = error.__cause__ or error.__context__
  return False


def reason(error: BaseException) -> str:
  """The database driver's first line about ``error``, passwords masked."""
  seen, inner = set(), error
  while inner is not None and id(inner) not in seen:
    seen.add(id(inner))
    if isinstance(inner, sqlalchemy.exc.DBAPIError) and inner.orig is not None:
      inner = inner.orig
      break
    inner = inner.__cause__ or inner.__context__
  text = str(inner if inner is not None else error).strip()
  return mask(text.splitlines()[0].strip() if text else type(error).__name__)


def _connection_problem(url: str) -> str | None:
  """Connects once; None when that works, else the reason."""
  kwargs = {k: v for k, v in engine_kwargs(url).items() if k != "pool_pre_ping"}
  engine = sqlalchemy.create_engine(storage_url(url), poolclass=sqlalchemy.pool.NullPool,
                                    **kwargs)
  try:
    with engine.connect() as conn:
      conn.execute(sqlalchemy.text("SELECT 1"))
  except sqlalchemy.exc.SQLAlchemyError as e:
    return reason(e)
  finally:
    engine.dispose()
  return None


def check_connection(url: str) -> None:
  """Connects once; a ConfigError ``--storage: cannot connect to URL (reason)`` if that fails."""
  problem = _connection_problem(url)
  if problem is not None:
    raise ConfigError("--storage", f"cannot connect to {shown(url)} ({problem})")


def wait_for_database(url: str, seconds: float, error: BaseException) -> None:
  """After ``error`` lost the connection: returns once ``url`` answers again, trying with backoff
  for ``seconds``; else a ConfigError naming the database and the last reason."""
  print(f"lbjax.hpo: lost the study database {shown(url)} ({reason(error)}); reconnecting for "
        f"up to {seconds:g} s", flush=True)
  start, delay = time.monotonic(), _FIRST_DELAY
  while True:
    problem = _connection_problem(url)
    if problem is None:
      print(f"lbjax.hpo: reconnected to the study database after {time.monotonic() - start:.1f} s",
            flush=True)
      return
    if time.monotonic() - start + delay > seconds:
      raise ConfigError("--storage", f"lost the connection to {shown(url)} for more than "
                        f"{seconds:g} s ({problem})")
    time.sleep(delay)
    delay = min(2 * delay, _MAX_DELAY)


# --- the budget lock ------------------------------------------------------------------------------

@contextlib.contextmanager
def _sqlite_lock(url: str, study_name: str) -> Iterator[None]:
  """An exclusive ``flock`` on ``<database>.lock``: SQLite studies live on one host."""
  del study_name
  path = parse(url).database
  if not path or path == ":memory:":
    raise ConfigError("--storage", "an in-memory SQLite database cannot be shared; use a file")
  with open(path + ".lock", "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _postgresql_lock(url: str, study_name: str) -> Iterator[None]:
  """A session-level advisory lock keyed by the study name; the server drops it if we die (or it
  restarts)."""
  key = zlib.crc32(f"lbjax.hpo:{study_name}".encode())
  engine = sqlalchemy.create_engine(storage_url(url), poolclass=sqlalchemy.pool.NullPool,
                                    connect_args={"connect_timeout": _CONNECT_TIMEOUT})
  try:
    with engine.connect() as conn:
      conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
      try:
        yield
      finally:
        try:
          conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        except sqlalchemy.exc.SQLAlchemyError as e:
          if not is_connection_error(e):
            raise
          # The session is gone, and the server released its lock with it.
  finally:
    engine.dispose()


# Database backend → the lock that makes "count the trials, then create one" atomic.
LOCKS: dict[str, Callable[[str, str], contextlib.AbstractContextManager]] = {
    "sqlite": _sqlite_lock,
    "postgresql": _postgresql_lock,
}


def budget_lock(url: str) -> Callable[[str, str], contextlib.AbstractContextManager]:
  """The lock of ``url``'s database backend (a ConfigError for an unsupported one)."""
  check_choice("--storage (database backend)", backend(url), LOCKS)
  return LOCKS[backend(url)]


# --- reconnecting storage -------------------------------------------------------------------------

# RDBStorage methods that open a database session (every other public method goes through them).
# `_CachedStorage`, which Optuna wraps around an RDBStorage, calls the private ones directly.
RETRIED_METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "_create_new_trial",
    "_set_trial_param", "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "_get_trials", "_get_best_trial_id", "get_trial_user_attrs",
    "get_trial_system_attrs", "record_heartbeat", "_get_stale_trial_ids",
)

_local = threading.local()  # per thread: inside a retried call; retries switched off


class ReconnectingRDBStorage(optuna.storages.RDBStorage):
  """An Optuna ``RDBStorage`` whose calls outlive a database restart.

  Each call of `RETRIED_METHODS` that fails on a lost connection (SQLAlchemy's
  ``OperationalError`` / ``InterfaceError``, also wrapped in Optuna's ``StorageInternalError``) is
  retried with backoff until ``reconnect_seconds`` have passed, then the error is raised. A
  trial's heartbeat thread, ``trial.report`` and the final ``tell`` all go through here, so the
  trial in flight keeps training across the restart. Retried writes are idempotent (attributes,
  intermediate values and parameters are upserts); a ``set_trial_state_values`` whose first
  attempt committed before the connection broke is recognised by the trial's state. Inside
  `no_reconnect` (the budget section, where a retried ``create_new_trial`` could exceed the
  budget) errors are raised at once.
  """

  def __init__(self, url: str, *, reconnect_seconds: float = 0, **kwargs):
    self.reconnect_seconds = reconnect_seconds
    self.shown_url = shown(url)
    super().__init__(storage_url(url), engine_kwargs=engine_kwargs(url), **kwargs)

  @contextlib.contextmanager
  def no_reconnect(self) -> Iterator[None]:
    previous = getattr(_local, "no_reconnect", False)
    _local.no_reconnect = True
    try:
      yield
    finally:
      _local.no_reconnect = previous

  def record_heartbeat(self, trial_id: int) -> None:
    """A heartbeat that outlasts even a longer outage: Optuna's heartbeat thread dies on an error
    (printing a traceback), so after the retry window this one says so and lets the next beat
    try again."""
    try:
      self._retrying("record_heartbeat", functools.partial(super().record_heartbeat, trial_id),
                     (trial_id,))
    except Exception as e:  # pylint: disable=broad-except
      if not is_connection_error(e):
        raise
      print(f"lbjax.hpo: no heartbeat for trial id {trial_id} ({reason(e)})", flush=True)

  def _retrying(self, name: str, call: Callable[[], Any], args: tuple) -> Any:
    if (not self.reconnect_seconds or getattr(_local, "busy", False)
        or getattr(_local, "no_reconnect", False)):
      return call()
    _local.busy = True
    try:
      start, delay, lost = time.monotonic(), _FIRST_DELAY, False
      while True:
        try:
          result = call()
        except optuna.exceptions.UpdateFinishedTrialError:
          # A retried state change whose first attempt committed before the connection broke.
          if not (lost and name == "set_trial_state_values"
                  and self.get_trial(args[0]).state == args[1]):
            raise
          result = True
        except Exception as e:  # pylint: disable=broad-except
          if (not is_connection_error(e)
              or time.monotonic() - start + delay > self.reconnect_seconds):
            raise
          if not lost:
            print(f"lbjax.hpo: lost the study database {self.shown_url} ({reason(e)}); retrying "
                  f"for up to {self.reconnect_seconds:g} s", flush=True)
            lost = True
          time.sleep(delay)
          delay = min(2 * delay, _MAX_DELAY)
          continue
        if lost:
          print(f"lbjax.hpo: reconnected to the study database after "
                f"{time.monotonic() - start:.1f} s", flush=True)
        return result
    finally:
      _local.busy = False


def _retried(name: str) -> Callable:
  """``RDBStorage.<name>`` (looked up at each call) under `ReconnectingRDBStorage._retrying`."""

  @functools.wraps(getattr(optuna.storages.RDBStorage, name))
  def retried(self, *args, **kwargs):
    call = functools.partial(getattr(optuna.storages.RDBStorage, name), self, *args, **kwargs)
    return self._retrying(name, call, args)  # pylint: disable=protected-access

  return retried


for _name in RETRIED_METHODS:
  if _name not in vars(ReconnectingRDBStorage):
    setattr(ReconnectingRDBStorage, _name, _retried(_name))


def open_storage(url: str, hpo: dict[str, Any] | None = None) -> ReconnectingRDBStorage:
  """The study database at ``url``; with ``hpo`` (`lbjax.hpo.space.settings`) it records trial
  heartbeats, retries stale trials and reconnects after a restart.

  Raises ConfigError ``--storage: cannot connect to URL (reason)`` when the database cannot be
  reached, and for an unsupported backend.
  """
  budget_lock(url)
  check_connection(url)
  kwargs: dict[str, Any] = {}
  if hpo is not None:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
      kwargs = {
          "reconnect_seconds": hpo["reconnect_seconds"],
          "heartbeat_interval": hpo["heartbeat_interval"],
          "grace_period": hpo["grace_period"],
          "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
              max_retry=hpo["max_retry"], inherit_intermediate_values=True)}
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
      return ReconnectingRDBStorage(url, **kwargs)
  except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
    if not is_connection_error(e):
      raise
    raise ConfigError("--storage", f"cannot connect to {shown(url)} ({reason(e)})") from None
