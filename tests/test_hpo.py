"""TPE search (lbjax/hpo/): SQLite study, report, PostgreSQL workers, a killed worker, a database
that cannot be reached or restarts, configs free of Optuna.

The PostgreSQL tests start their own server from the OS package (`apt-get install postgresql`,
which `.ci/run` does) in a temporary directory; without it they fail, they do not skip.
"""

import glob
import inspect
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types

import ml_collections
import optuna
from optuna.trial import TrialState
import pytest

from configs import seed002_adam
from configs import seed002_kfac
from configs import seed002_sgd
from lbjax import dotted
from lbjax import metrics as metrics_lib
from lbjax.errors import ConfigError
from lbjax.hpo import report as hpo_report
from lbjax.hpo import space as space_lib
from lbjax.hpo import storage as storage_lib
from lbjax.hpo import worker
from tests import xla
from tests.hang import HANG_SECONDS
from tests.test_swap import tiny_config as tiny_swap_config
from tests.test_workdir import _hold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A good and a hopeless point of the SGD space: validation accuracy ~0.6 vs ~0.15 after 20 steps.
GOOD = {"weight_decay": 5e-4, "lr": 0.05, "lr_decay": 0.5, "lr_decay_epoch": 10, "momentum": 0.9}
BAD = {"weight_decay": 1e-5, "lr": 1e-4, "lr_decay": 0.1, "lr_decay_epoch": 1, "momentum": 0.5}

# Seed 002 SGD on digits made tiny: batch 32, 16x16, 40 steps, validated at steps 20 and 40.
TINY = {"batch_size": 32, "image_size": 16, "augment": "normalize", "num_epochs": 0.98,
        "eval_every_epochs": 0.5, "log_every_steps": 10}


def tiny_config(**overrides):
  c = seed002_sgd.get_config("bs=128,data=digits")
  for key, value in {**TINY, **overrides}.items():
    setattr(c, key, value)
  c.hpo.n_startup_trials = 2
  c.hpo.seed = 0
  return c


def _read(path):
  with open(path) as f:
    return f.read()


def by_number(study):
  return {t.number: t for t in study.get_trials()}


# --- the configs' search spaces -------------------------------------------------------------------

@pytest.mark.parametrize("module", [seed002_sgd, seed002_adam, seed002_kfac])
def test_search_spaces_cover_table1(module):
  config = module.get_config("bs=512")
  space = config.search_space
  assert config.hpo.validation_fraction > 0
  for batch_size, row in module.TABLE1.items():
    tuned = module.get_config(f"bs={batch_size}")
    for name, entry in space.items():
      value = float(dotted.get(tuned, entry.key))  # Table 1's value, via the config
      field = entry.key.split(".")[-1]
      assert value == pytest.approx(row[field]), (name, batch_size)
      assert entry.low <= value <= entry.high, (name, batch_size, value)
      if entry.type == "int":
        assert (value - entry.low) % entry.step == 0
      # Log-uniform exactly where the range spans two decades or more.
      assert entry.get("log", False) == (entry.high / entry.low >= 100), name
  # Every Table 1 column of the optimizer is searched, except Adam's fixed ones.
  fixed = {"val_acc"} | ({"weight_decay", "b2", "eps"} if module is seed002_adam else set())
  searched = {e.key.split(".")[-1] for e in space.values()}
  assert searched == set(module.TABLE1[128]) - fixed
  # The report's columns follow Table 1's order.
  labels = [label for _, label, _ in space_lib.columns(config)]
  assert labels[0] in ("weight decay", "α") and labels[-1] in ("momentum", "β1", "damping")


def test_digits_variant_scales_the_decay_period():
  full, small = seed002_sgd.get_config("bs=2048"), seed002_sgd.get_config("bs=2048,data=digits")
  assert small.dataset == "digits" and small.num_epochs == 10.0
  assert small.schedule.lr_decay_epoch == full.schedule.lr_decay_epoch / 10 == 5.0
  entry = small.search_space.lr_decay_epoch
  assert (entry.low, entry.high, entry.step) == (1, 10, 1)


@pytest.mark.parametrize("mutate,key", [
    (lambda c: setattr(c.search_space.lr, "key", "optimizer.lr"), "config.search_space.lr.key"),
    (lambda c: setattr(c.search_space.lr, "low", 0.0), "config.search_space.lr.low"),
    (lambda c: setattr(c.search_space.lr, "type", "gaussian"), "config.search_space.lr.type"),
    (lambda c: setattr(c.hpo, "validation_fraction", None), "config.validation_fraction"),
    (lambda c: setattr(c.hpo, "pruner", "psychic"), "config.hpo.pruner"),
    (lambda c: setattr(c.hpo, "pruner", "threshold"), "config.hpo.pruner_threshold"),
    (lambda c: setattr(c.hpo, "pruner_threshold", 0.5), "config.hpo.pruner_threshold"),
    (lambda c: (setattr(c.hpo, "pruner", "threshold"), setattr(c.hpo, "pruner_threshold", 1.5)),
     "config.hpo.pruner_threshold"),
    (lambda c: setattr(c.hpo, "grace_period", 30), "config.hpo.grace_period"),
])
def test_bad_search_config_names_its_key(mutate, key):
  config = tiny_config()
  mutate(config)
  with pytest.raises(ConfigError) as e:
    worker.validate(config, device_count=1)
  assert e.value.key == key


def test_bad_storage_and_trials_name_their_flag(tmp_path):
  with pytest.raises(ConfigError, match="--storage"):
    worker.run_worker(tiny_config(), study_name="s", trials=1, workdir=str(tmp_path),
                   storage="mongodb://localhost/hpo")
  with pytest.raises(ConfigError, match="--trials"):
    worker.run_worker(tiny_config(), study_name="s", trials=0, workdir=str(tmp_path))
  assert not os.path.exists(tmp_path / "s")


# --- configs are data; the pieces agree ---------------------------------------------------------

def test_configs_import_neither_optuna_nor_absl_flags_nor_the_worker():
  """Every config module imports (in a fresh process) without Optuna, SQLAlchemy, the HPO worker
  or storage, and defines no absl flag. ``ml_collections`` itself loads ``absl.flags``, so the
  check is against what a bare ``import ml_collections`` already holds."""
  names = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                 if f.endswith(".py") and f != "__init__.py")
  script = (
      "import importlib, json, sys\n"
      "import ml_collections\n"
      "from absl import flags\n"
      "before, defined = set(sys.modules), set(flags.FLAGS)\n"
      f"for name in {names!r}:\n"
      "  importlib.import_module('configs.' + name)\n"
      "print(json.dumps({'new': sorted(set(sys.modules) - before),\n"
      "                  'flags': sorted(set(flags.FLAGS) - defined)}))\n")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       check=True)
  loaded = json.loads(out.stdout.strip().splitlines()[-1])
  assert "configs.seed002_common" in loaded["new"] and "lbjax.hpo.space" in loaded["new"]
  forbidden = [m for m in loaded["new"]
               if m.split(".")[0] in ("optuna", "sqlalchemy", "absl")
               or m in ("lbjax.hpo.worker", "lbjax.hpo.storage", "lbjax.hpo.__main__")]
  assert forbidden == [] and loaded["flags"] == []


def test_worker_builds_every_sampler_pruner_and_type_the_space_allows():
  assert tuple(worker.SAMPLERS) == space_lib.SAMPLERS and tuple(worker.PRUNERS) == space_lib.PRUNERS
  assert set(worker.SUGGEST) == set(space_lib.PARAM_TYPES)


def test_every_database_call_of_the_storage_reconnects():
  """`ReconnectingRDBStorage` retries exactly the RDBStorage methods that open a session (an
  Optuna upgrade that adds one fails here)."""
  rdb = optuna.storages.RDBStorage
  opening = {name for name, f in vars(rdb).items()
             if callable(f) and "_create_scoped_session(" in inspect.getsource(f)}
  assert opening == set(storage_lib.RETRIED_METHODS)
  for name in opening:
    assert getattr(storage_lib.ReconnectingRDBStorage, name) is not getattr(rdb, name), name


def test_storage_retries_lost_connections_within_its_window(tmp_path, monkeypatch, capsys):
  """Injected connection losses: a call is retried until it succeeds (within
  ``reconnect_seconds``), raised at once inside ``no_reconnect`` or with the window spent; a state
  change whose first attempt committed is recognised on retry."""
  import sqlalchemy  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(storage_lib, "_FIRST_DELAY", 0.01)
  rdb = storage_lib.open_storage(storage_lib.default_storage(str(tmp_path)),
                                 space_lib.settings(tiny_config()))
  study = optuna.create_study(storage=rdb, study_name="s")
  trial_id = study.ask()._trial_id
  lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
  real = optuna.storages.RDBStorage.set_trial_user_attr
  failures = []

  def flaky(self, *args):
    if len(failures) < 2:
      failures.append(args)
      raise optuna.exceptions.StorageInternalError("commit failed") from lost
    return real(self, *args)

  monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_user_attr", flaky)
  rdb.set_trial_user_attr(trial_id, "k", 1)
  assert len(failures) == 2 and rdb.get_trial(trial_id).user_attrs == {"k": 1}
  out = capsys.readouterr().out
  assert "lbjax.hpo: lost the study database sqlite:///" in out and "server closed" in out
  assert "lbjax.hpo: reconnected to the study database after" in out

  failures.clear()
  with rdb.no_reconnect(), pytest.raises(optuna.exceptions.StorageInternalError):
    rdb.set_trial_user_attr(trial_id, "k", 2)
  assert len(failures) == 1
  failures.clear()
  rdb.reconnect_seconds = 0.001
  with pytest.raises(optuna.exceptions.StorageInternalError):
    rdb.set_trial_user_attr(trial_id, "k", 3)
  assert len(failures) == 1
  rdb.reconnect_seconds = 10

  # The first attempt committed COMPLETE, then the connection broke before the answer came.
  real_state = optuna.storages.RDBStorage.set_trial_state_values
  attempts = []

  def committed_then_lost(self, *args, **kwargs):
    attempts.append(args)
    result = real_state(self, *args, **kwargs)
    if len(attempts) == 1:
      raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("connection reset"))
    return result

  monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", committed_then_lost)
  assert rdb.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5]) is True
  assert len(attempts) == 2 and rdb.get_trial(trial_id).state == TrialState.COMPLETE
  assert rdb.get_trial(trial_id).value == 0.5
  # A different state asked of a finished trial is still an error.
  with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
    rdb.set_trial_state_values(trial_id, TrialState.FAIL)


def test_passwords_are_masked_in_urls_and_errors():
  url = "postgresql://hpo:s3cr%40t@dbhost:5432/hpo"  # password "s3cr@t", escaped
  assert storage_lib.shown(url) == "postgresql://hpo:***@dbhost:5432/hpo"
  # Unescaped, SQLAlchemy reads "t@dbhost" as the host: still nothing of the password shown.
  assert storage_lib.shown(url.replace("%40", "@")) == "postgresql://hpo:***@dbhost:5432/hpo"
  assert storage_lib.shown("postgresql://hpo@dbhost/hpo") == "postgresql://hpo@dbhost/hpo"
  assert storage_lib.mask(f"a {url.replace('%40', '@')} b sqlite:///x.db") == (
      "a postgresql://hpo:***@dbhost:5432/hpo b sqlite:///x.db")
  # Too malformed to parse (a port that is not a number): still masked.
  with pytest.raises(ConfigError) as e:
    storage_lib.parse("postgresql://hpo:s3cr@t@dbhost:port/hpo")
  assert str(e.value) == "--storage: not a database URL: 'postgresql://hpo:***@dbhost:port/hpo'"
  # The driver made explicit for SQLAlchemy keeps the password (it connects with it).
  assert storage_lib.storage_url(url) == "postgresql+psycopg2://hpo:s3cr%40t@dbhost:5432/hpo"


def test_reconnect_setting_is_checked():
  config = tiny_config()
  config.hpo.reconnect_seconds = -1
  with pytest.raises(ConfigError) as e:
    space_lib.settings(config)
  assert e.value.key == "config.hpo.reconnect_seconds"


# --- SQLite: one worker in this process ----------------------------------------------------------

def test_sqlite_study_completes_n_trials_prunes_records_divergence_and_reports(tmp_path):
  workdir = str(tmp_path)
  storage = storage_lib.default_storage(workdir)
  config = tiny_config()
  config.search_space.lr.high = 1e7  # wide enough to hold a diverging point
  config.hpo.pruner = "median"
  config.hpo.pruner_startup_trials = 1
  # Queue a good, a hopeless and a diverging point, so the outcome of each trial is known.
  settings = space_lib.settings(config)
  study = worker.load_or_create_study(config, "sgd_32", storage_lib.open_storage(storage, settings),
                                   settings)
  for point in (GOOD, BAD, dict(GOOD, lr=1e6)):
    study.enqueue_trial(point)
  counts = worker.run_worker(config, study_name="sgd_32", trials=3, workdir=workdir)
  assert counts == {"complete": 1, "pruned": 1, "diverged": 1, "failed": 0, "running": 0,
                    "waiting": 0}

  trials = by_number(optuna.load_study(study_name="sgd_32", storage=storage))
  assert sorted(trials) == [0, 1, 2]
  good, bad, wild = trials[0], trials[1], trials[2]
  assert good.state == TrialState.COMPLETE and good.params == pytest.approx(GOOD)
  # The trial trained the suggested config on the validation split ...
  with open(os.path.join(good.user_attrs["workdir"], "config.json")) as f:
    saved = json.load(f)
  assert saved["optimizer"]["learning_rate"] == GOOD["lr"]
  assert saved["optimizer"]["momentum"] == GOOD["momentum"]
  assert saved["schedule"]["lr_decay_epoch"] == GOOD["lr_decay_epoch"]
  assert saved["validation_fraction"] == 0.1
  # ... reported every validation accuracy; its value is the accuracy of the run's result (the
  # trained weights: no SWA or SWAP here), the last evaluation.
  records = [r for r in metrics_lib.read_metrics(good.user_attrs["workdir"])
             if "validation_accuracy" in r]
  assert [r["step"] for r in records] == [20, 40]
  assert good.intermediate_values == {r["step"]: r["validation_accuracy"] for r in records}
  assert good.value == records[-1]["validation_accuracy"] > 0.5
  assert good.user_attrs["result_validation_accuracy"] == good.value
  assert good.user_attrs["status"] == "completed"
  # The hopeless point was stopped by the median pruner at its first evaluation.
  assert bad.state == TrialState.PRUNED and bad.user_attrs["status"] == "pruned"
  assert list(bad.intermediate_values) == [20]
  assert bad.intermediate_values[20] < good.intermediate_values[20]
  assert metrics_lib.read_status(bad.user_attrs["workdir"])["status"] == "stopped"
  # The diverging point is recorded as diverged, not as a crash.
  assert wild.state == TrialState.PRUNED and wild.user_attrs["status"] == "diverged"
  status = metrics_lib.read_status(wild.user_attrs["workdir"])
  assert status["status"] == "diverged" and wild.user_attrs["diverged_step"] == status["step"]
  # Checkpoints of finished trials are removed (hpo.keep_trial_checkpoints = False), metrics kept.
  assert not os.path.exists(os.path.join(good.user_attrs["workdir"], "checkpoints"))

  # --trials is the study's total: another worker finds nothing left to do.
  assert worker.run_worker(config, study_name="sgd_32", trials=3, workdir=workdir) == counts
  # A worker with another config is refused before it trains.
  with pytest.raises(ConfigError, match="different config"):
    worker.run_worker(tiny_config(num_epochs=2.0), study_name="sgd_32", trials=4, workdir=workdir)
  # A second optimizer's study, created and not yet run, gets its own section.
  adam = seed002_adam.get_config("bs=2048,data=digits")
  worker.load_or_create_study(adam, "adam_2048", storage_lib.open_storage(storage, settings),
                              settings)

  out = str(tmp_path / "report")
  text, rows = hpo_report.report(storage, None, out)
  assert sorted((r["optimizer"], r["batch_size"]) for r in rows) == [("adam", 2048), ("sgd", 32)]
  lines = text.splitlines()
  headers = [l.strip("| ").split(" | ") for l in lines if l.startswith("| batch size")]
  assert headers == [
      ["batch size", "val-acc", "α", "α-decay", "α-decay-epoch", "β1", "trial",
       "complete/pruned/diverged/failed", "study"],
      ["batch size", "val-acc", "weight decay", "lr", "lr-decay", "lr-decay-epoch", "momentum",
       "trial", "complete/pruned/diverged/failed", "study"]]
  assert lines.index("### Adam") < lines.index("### Momentum SGD")
  row = next(l for l in lines if l.startswith("| 32 |")).strip("| ").split(" | ")
  assert float(row[1]) == pytest.approx(good.value, rel=1e-5)
  assert [float(v) for v in row[2:7]] == pytest.approx(
      [GOOD[k] for k in ("weight_decay", "lr", "lr_decay", "lr_decay_epoch", "momentum")],
      rel=1e-5)
  assert row[7:] == ["0", "1/1/1/0", "sgd_32"]
  row = next(l for l in lines if l.startswith("| 2048 |")).strip("| ").split(" | ")
  assert row == ["2048", "—", "", "", "", "", "—", "0/0/0/0", "adam_2048"]
  with open(os.path.join(out, "hpo_report.md")) as f:
    assert f.read() == text
  # History plots; importances need two completed trials.
  pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
  assert pngs == ["adam_2048_history.png", "sgd_32_history.png"]
  assert "sgd_32: no importance plot (1 completed trial(s), needs 2)" in text
  for name in pngs:
    with open(os.path.join(out, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"



def test_worker_skips_a_trial_whose_workdir_another_process_holds(tmp_path, capsys):
  """Issue 19: a trial whose workdir a live process owns is skipped (FAIL, 'workdir in use'), its
  workdir untouched, and a new trial takes its place in the budget."""
  workdir = str(tmp_path)
  storage = storage_lib.default_storage(workdir)
  config = tiny_config(num_epochs=0.5, eval_every_epochs=0.5)
  settings = space_lib.settings(config)
  study = worker.load_or_create_study(config, "sgd_32", storage_lib.open_storage(storage, settings),
                                      settings)
  for _ in range(2):
    study.enqueue_trial(GOOD)
  held = os.path.join(workdir, "sgd_32", "trial_0")
  holder = _hold(held)
  try:
    counts = worker.run_worker(config, study_name="sgd_32", trials=1, workdir=workdir)
  finally:
    holder.kill()
    holder.wait()
  assert counts == {"complete": 1, "pruned": 0, "diverged": 0, "failed": 1, "running": 0,
                    "waiting": 0}
  trials = by_number(optuna.load_study(study_name="sgd_32", storage=storage))
  assert trials[0].state == TrialState.FAIL
  assert trials[0].user_attrs["status"] == "workdir in use"
  assert os.listdir(held) == [".lock"]  # the holder's lock file; the skipped trial wrote nothing
  assert trials[1].state == TrialState.COMPLETE
  assert trials[1].user_attrs["workdir"].endswith(os.path.join("sgd_32", "trial_1"))
  out = capsys.readouterr().out
  assert re.search(r"lbjax.hpo: trial 0 skipped: its workdir is in use by process \d+ on ", out), out


def test_swap_study_tunes_phase_2_and_leaves_no_checkpoints(tmp_path, capsys):
  """Issue 26 item 3: a space over a SWAP config tunes phase 2 through its ``swap.*`` keys (here
  its learning rate and a placeholder of its schedule, the linear-scaling base batch), and with
  ``hpo.keep_trial_checkpoints=False`` the finished trial keeps no checkpoint of any phase."""
  workdir = str(tmp_path)
  storage = storage_lib.default_storage(workdir)
  config = tiny_swap_config(**{"validation_fraction": 0.1, "swap.phase1_stop_accuracy": None})
  assert config.swap.schedule.base_batch_size is None  # a placeholder: the file does not scale
  with config.unlocked():
    config.search_space = ml_collections.ConfigDict({
        "lr": {"key": "optimizer.learning_rate", "type": "float", "low": 0.01, "high": 0.1},
        "swap_lr": {"key": "swap.optimizer.learning_rate", "type": "float", "low": 1e-3,
                    "high": 0.1, "log": True},
        "swap_base": {"key": "swap.schedule.base_batch_size", "type": "int", "low": 16,
                      "high": 64}})
  assert space_lib.settings(config)["keep_trial_checkpoints"] is False
  point = {"lr": 0.05, "swap_lr": 0.0123, "swap_base": 32}
  settings = space_lib.settings(config)
  study = worker.load_or_create_study(config, "swap", storage_lib.open_storage(storage, settings),
                                      settings)
  study.enqueue_trial(point)
  counts = worker.run_worker(config, study_name="swap", trials=1, workdir=workdir)
  assert counts["complete"] == 1, counts
  assert "tunes no config.swap" not in capsys.readouterr().out
  trial = optuna.load_study(study_name="swap", storage=storage).trials[0]
  assert trial.params == pytest.approx(point)
  run_dir = trial.user_attrs["workdir"]
  with open(os.path.join(run_dir, "config.json")) as f:
    saved = json.load(f)
  assert saved["optimizer"]["learning_rate"] == 0.05
  assert saved["swap"]["optimizer"]["learning_rate"] == 0.0123
  assert saved["swap"]["schedule"]["base_batch_size"] == 32
  # Phase 2 trained at the suggested rate, linearly scaled to its batch of 16: 0.0123 * 16 / 32
  # at the start of its cosine (the file's would be 0.02, unscaled); phase 1 at 0.05.
  phase2 = [r["train_learning_rate"] for r in metrics_lib.read_metrics(run_dir)
            if "train_learning_rate" in r]
  assert phase2 and 0.5 * 0.00615 < max(phase2) <= 0.00615 * (1 + 1e-5), phase2
  phase1 = [r["train_learning_rate"] for r in metrics_lib.read_metrics(
      os.path.join(run_dir, "phase1")) if "train_learning_rate" in r]
  assert phase1 and 0.5 * 0.05 < max(phase1) <= 0.05 * (1 + 1e-5), phase1
  assert metrics_lib.read_status(run_dir)["phase"] == 3
  # No checkpoint directory of any phase is left; configs, statuses and metrics are.
  left = [root for root, dirs, _ in os.walk(workdir) for d in dirs if d == "checkpoints"]
  assert not left, left
  for name in ("metrics.jsonl", "status.json", os.path.join("phase1", "metrics.jsonl"),
               os.path.join("phase1", "status.json")):
    assert os.path.exists(os.path.join(run_dir, name)), name

  # A space that names no swap.* key leaves phase 2 at the config's values: the worker says so.
  with config.unlocked():
    del config.search_space["swap_lr"], config.search_space["swap_base"]
  assert space_lib.untuned_phase2_note(config) == (
      "the search space tunes no config.swap.* key: SWAP's phase 2 runs config.swap.optimizer "
      "(sgd, learning_rate 0.02) and config.swap.schedule as the config sets them in every trial")
  assert space_lib.untuned_phase2_note(tiny_config()) is None  # no SWAP


# --- PostgreSQL: worker processes sharing one study -----------------------------------------------

def _pg_binary(name):
  found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
  return found[-1] if found else shutil.which(name)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
  """A PostgreSQL server on 127.0.0.1 in a temporary directory: ``url`` of its database ``hpo``,
  ``port``, and ``outage(seconds)``, which stops the server (fast mode: sessions are cut) and
  starts it again after ``seconds``."""
  initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
  if not (initdb and pg_ctl):
    pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: install the OS package "
                "(apt-get install -y postgresql; .ci/run does)")
  root = tempfile.mkdtemp(prefix="lbjax_pg_")
  as_user = []
  if os.geteuid() == 0:  # the server refuses to run as root
    try:
      user = pwd.getpwnam("postgres")
    except KeyError:
      pytest.fail("running as root needs the `postgres` user that the OS package creates")
    os.chown(root, user.pw_uid, user.pw_gid)
    as_user = ["runuser", "-u", "postgres", "--"]
  data, log, port = os.path.join(root, "data"), os.path.join(root, "server.log"), _free_port()
  start = as_user + [pg_ctl, "-D", data, "-l", log, "-w", "-t", "60", "-o",
                     f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"]
  try:
    subprocess.run(as_user + [initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, text=True)
    subprocess.run(start, check=True, capture_output=True, text=True)
  except subprocess.CalledProcessError as e:
    server_log = _read(log) if os.path.exists(log) else ""
    pytest.fail(f"could not start PostgreSQL: {e.cmd}: {e.stderr}\n{server_log}")
  import psycopg2  # pylint: disable=g-import-not-at-top
  conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
  conn.autocommit = True
  conn.cursor().execute("CREATE DATABASE hpo")
  conn.close()

  def outage(seconds):
    subprocess.run(as_user + [pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], check=True,
                   capture_output=True)
    time.sleep(seconds)
    subprocess.run(start, check=True, capture_output=True)

  try:
    yield types.SimpleNamespace(url=f"postgresql://postgres@127.0.0.1:{port}/hpo", port=port,
                                outage=outage)
  finally:
    subprocess.run(as_user + [pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True,
                   check=False)
    shutil.rmtree(root, ignore_errors=True)


def start_worker(study, storage, trials, workdir, log_path, grace_period=3, **overrides):
  """``python -m lbjax.hpo`` as a user runs it, on one CPU device, heartbeat every second;
  ``overrides`` change TINY."""
  env = xla.process_env(1)
  overrides = [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]
  cmd = [sys.executable, "-m", "lbjax.hpo", "--config=configs/seed002_sgd.py:bs=128,data=digits",
         *overrides, "--config.hpo.heartbeat_interval=1",
         f"--config.hpo.grace_period={grace_period}",
         "--config.hpo.n_startup_trials=1",
         f"--study={study}", f"--storage={storage}", f"--trials={trials}", f"--workdir={workdir}"]
  with open(log_path, "w") as log:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def workers_of(study):
  """Trial number → pid of the worker that ran (or runs) it."""
  return {t.number: int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in study.get_trials()
          if "worker" in t.user_attrs}


def test_postgresql_workers_share_one_study_and_survive_a_kill(postgres, tmp_path):
  """Two worker processes pull trials of one study; one is killed mid-trial (SIGKILL: no chance
  to clean up). Its trial goes stale, is marked FAIL and retried with the same parameters, and
  the other worker finishes the study: exactly N trials that did not fail, unique ids."""
  n = 2
  logs = [str(tmp_path / f"worker{i}.log") for i in range(2)]
  runs = str(tmp_path / "runs")
  victim = start_worker("sgd_pg", postgres.url, n, runs, logs[0])
  survivor = start_worker("sgd_pg", postgres.url, n, runs, logs[1])
  storage = optuna.storages.RDBStorage(storage_lib.storage_url(postgres.url))
  deadline, killed = time.time() + HANG_SECONDS, None
  try:
    while killed is None:
      assert time.time() < deadline and victim.poll() is None and survivor.poll() is None, (
          "both workers never ran a trial at once:\n" + _read(logs[0])[-3000:] +
          "\n----\n" + _read(logs[1])[-3000:])
      time.sleep(0.5)
      if "sgd_pg" not in optuna.study.get_all_study_names(storage):
        continue
      study = optuna.load_study(study_name="sgd_pg", storage=storage)
      running = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
      owners = workers_of(study)
      mine = [k for k in running if owners.get(k) == victim.pid]
      if mine and any(owners.get(k) == survivor.pid for k in running):
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = mine[0]
    rc = survivor.wait(timeout=max(1, deadline - time.time()))
  finally:
    for proc in (victim, survivor):
      if proc.poll() is None:
        proc.kill()
  assert rc == 0, _read(logs[1])[-4000:]

  study = optuna.load_study(study_name="sgd_pg", storage=storage)
  trials = by_number(study)
  assert len({t._trial_id for t in trials.values()}) == len(trials)
  assert sorted(trials) == list(range(len(trials)))
  # The killed trial failed and was retried, once, with its parameters and its workdir.
  assert trials[killed].state == TrialState.FAIL
  (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
  assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
  assert retry.params == trials[killed].params
  assert retry.user_attrs["workdir"] == trials[killed].user_attrs["workdir"]
  owners = workers_of(study)
  assert owners[retry.number] == survivor.pid
  # Both workers ran trials of the one study, which holds exactly N that did not fail.
  assert victim.pid in owners.values()
  finished = [t for t in trials.values() if t.state != TrialState.FAIL]
  assert len(finished) == n and len(trials) == n + 1
  assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in finished)
  # The study stays usable: a report reads it.
  text, rows = hpo_report.report(postgres.url, ["sgd_pg"], str(tmp_path / "report"))
  assert rows[0]["counts"]["failed"] == 1 and "| 32 |" in text


def test_unreachable_or_refusing_database_is_one_line_with_the_password_masked(postgres, tmp_path):
  """No server at the port: the worker exits 1 with one line and no traceback; the server
  refusing (no such database): the same line from the storage, for the worker and the report."""
  port = _free_port()
  env = xla.process_env(1)
  cmd = [sys.executable, "-m", "lbjax.hpo", "--config=configs/seed002_sgd.py:bs=128,data=digits",
         f"--storage=postgresql://hpo:s3cret@127.0.0.1:{port}/hpo", "--study=s", "--trials=1",
         f"--workdir={tmp_path}"]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_SECONDS,
                       check=False)
  assert out.returncode == 1 and out.stdout == "", out.stderr[-3000:]
  assert out.stderr == (
      f"lbjax: error: --storage: cannot connect to postgresql://hpo:***@127.0.0.1:{port}/hpo "
      f'(connection to server at "127.0.0.1", port {port} failed: Connection refused)\n')
  assert os.listdir(tmp_path) == []

  refused = postgres.url.replace("postgres@", "postgres:s3cret@").replace("/hpo", "/nope")
  expected = (f"--storage: cannot connect to {refused.replace('s3cret', '***')} (connection to "
              f'server at "127.0.0.1", port {postgres.port} failed: FATAL:  database "nope" does '
              "not exist)")
  with pytest.raises(ConfigError) as e:
    worker.run_worker(tiny_config(), study_name="s", trials=1, workdir=str(tmp_path),
                      storage=refused)
  assert str(e.value) == expected
  with pytest.raises(ConfigError) as e:
    hpo_report.report(refused, None, str(tmp_path / "report"))
  assert str(e.value) == expected


def test_postgresql_restart_mid_study_loses_no_trial(postgres, tmp_path):
  """The server stops (sessions cut) while two workers run a trial each, and starts again 3 s
  later: both workers reconnect (heartbeats, reports, the final tell), finish, and the study holds
  its N trials, none failed. The password of the URL (ignored by the test server's trust
  authentication) appears in no log."""
  n = 2
  url = postgres.url.replace("postgres@", "postgres:s3cret@")
  logs = [str(tmp_path / f"worker{i}.log") for i in range(2)]
  runs = str(tmp_path / "runs")
  # Half of TINY: 20 steps, one evaluation.
  procs = [start_worker("sgd_restart", url, n, runs, log, grace_period=60, num_epochs=0.49,
                        eval_every_epochs=0.49) for log in logs]
  storage = optuna.storages.RDBStorage(storage_lib.storage_url(postgres.url))
  deadline = time.time() + HANG_SECONDS
  try:
    while True:
      assert time.time() < deadline and all(p.poll() is None for p in procs), (
          "both workers never ran a trial at once:\n" + _read(logs[0])[-3000:] +
          "\n----\n" + _read(logs[1])[-3000:])
      time.sleep(0.5)
      if "sgd_restart" not in optuna.study.get_all_study_names(storage):
        continue
      study = optuna.load_study(study_name="sgd_restart", storage=storage)
      running = study.get_trials(states=(TrialState.RUNNING,))
      owners = {workers_of(study).get(t.number) for t in running}
      if owners >= {p.pid for p in procs}:
        break
    storage.engine.dispose()
    postgres.outage(3.0)
    rcs = [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = [_read(log) for log in logs]
  assert rcs == [0, 0], "\n----\n".join(t[-3000:] for t in texts)
  for text in texts:
    assert "lbjax.hpo: lost the study database postgresql://postgres:***@127.0.0.1" in text, text
    assert "lbjax.hpo: reconnected to the study database after" in text, text
    assert "s3cret" not in text and "Traceback" not in text, text
  study = optuna.load_study(study_name="sgd_restart", storage=storage)
  trials = by_number(study)
  assert sorted(trials) == list(range(n))
  assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials.values())
  assert set(workers_of(study).values()) == {p.pid for p in procs}
