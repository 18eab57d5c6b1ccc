r"""The HPO launcher: ``python -m lbjax.hpo`` (a worker) and ``python -m lbjax.hpo report``.

    python -m lbjax.hpo --config=configs/seed002_sgd.py:bs=512 --study=sgd_512 \
        --storage=postgresql://hpo@dbhost/hpo --trials=100 [--workdir=runs/hpo]
    python -m lbjax.hpo report --study=sgd_512,adam_512 --storage=URL [--out=DIR]

Errors (a bad config or flag, a database that cannot be reached) are one line
``lbjax: error: <key>: <reason>`` and exit code 1; a database URL is printed with its password
masked (``postgresql://hpo:***@dbhost/hpo``).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from lbjax import distributed
from lbjax.errors import ConfigError
from lbjax.hpo import hosts
from lbjax.hpo import report as hpo_report
from lbjax.hpo import space
from lbjax.hpo import storage as storage_lib
from lbjax.hpo import worker
from lbjax.optim import registry

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file("config", None, "Config file with a search_space "
                                "(e.g. configs/seed002_sgd.py:bs=512).", lock_config=True)
flags.DEFINE_string("study", None, "Study name (report: comma-separated names; default: all).")
flags.DEFINE_string("storage", None, "Optuna RDB URL: postgresql://user@host/db (password from "
                    "~/.pgpass or PGPASSWORD) or sqlite:///path.db "
                    "(default: sqlite:///WORKDIR/hpo.db).")
flags.DEFINE_integer("trials", None, "Total trials of the study, over all workers.")
flags.DEFINE_string("workdir", "runs/hpo", "Trial workdirs go to WORKDIR/<study>/trial_<n>.")
flags.DEFINE_string("out", None, "report: output directory (default: WORKDIR/report).")
distributed.define_flags()  # one process per host: process 0 asks the study, all train


def enable_compilation_cache(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Points JAX's persistent compilation cache at ``config.hpo.compilation_cache``.

  Trials recompile the same model initialisation and evaluation step (their HLO does not depend
  on the hyperparameters); the cache shares them between trials and workers. Set once per process
  before anything compiles, so only the launcher calls it.
  """
  cache = space.settings(config)["compilation_cache"]
  if cache:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join(workdir, cache)))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def switch_optimizers() -> None:
  """As `lbjax.main.switch_optimizers`: an optimizer block whose ``name`` is changed on the
  command line gets that optimizer's defaults, the file's learning rate and the keys set beside
  the name (`registry.switch_blocks`)."""
  overrides = config_flags.get_override_values(FLAGS["config"])
  before = {path: FLAGS[f"config.{path}.name"].default for path in registry.BLOCKS
            if f"config.{path}.name" in FLAGS}
  registry.switch_blocks(FLAGS.config, overrides, before)


def main(argv):
  logging.set_verbosity(logging.WARNING)
  command = argv[1:]
  try:
    storage = FLAGS.storage or storage_lib.default_storage(FLAGS.workdir)
    if command == ["report"]:
      names = [n for n in (FLAGS.study or "").split(",") if n] or None
      text, _ = hpo_report.report(storage, names,
                                  FLAGS.out or os.path.join(FLAGS.workdir, "report"))
      print(text, flush=True)
      return
    if command:
      raise app.UsageError(f"unknown command {' '.join(command)!r}; the only one is `report`")
    if FLAGS.config is None:
      raise ConfigError("--config", "a config file with a search_space is required")
    if FLAGS.trials is None:
      raise ConfigError("--trials", "required: the study's total number of trials")
    distributed.initialize()
    switch_optimizers()
    enable_compilation_cache(FLAGS.config, FLAGS.workdir)
    if jax.process_index() > 0:  # a trial is one SPMD run: follow process 0's trials
      n = hosts.follow(FLAGS.config)
      print(f"lbjax.hpo: process {jax.process_index()}: ran {n} trial(s) of process 0",
            flush=True)
      return
    try:
      counts = worker.run_worker(FLAGS.config, study_name=FLAGS.study, trials=FLAGS.trials,
                                 workdir=FLAGS.workdir, storage=storage)
    finally:
      hosts.share(None)  # the other processes stop following
  except ConfigError as e:
    sys.exit(f"lbjax: error: {storage_lib.mask(str(e))}")
  print(f"lbjax.hpo: study {FLAGS.study}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
        flush=True)


if __name__ == "__main__":
  app.run(main)
