r"""lbjax launcher.

    python -m lbjax.main --config=configs/quickstart.py --workdir=runs/quickstart \
        [--config.batch_size=4096 --config.optimizer.name=lars ...]

Multi-host (one process per host): pass --coordinator_address, --num_processes and --process_id
(or set LBJAX_COORDINATOR_ADDRESS, LBJAX_NUM_PROCESSES, LBJAX_PROCESS_ID); on Cloud TPU and
SLURM, --distributed alone lets `jax.distributed.initialize()` detect them.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from lbjax import distributed
from lbjax import dotted
from lbjax import runners
from lbjax import workdir as workdir_lib
from lbjax.errors import ConfigError
from lbjax.optim import registry
from lbjax.workdir import WriteFailure

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the launcher's flags on ``flag_values`` (a fresh FlagValues in tests)."""
  config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()).",
                                  lock_config=True, flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and status.",
                      flag_values=flag_values)
  distributed.define_flags(flag_values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


define_flags()


def parse_flags(argv: list[str], flag_values: flags.FlagValues = FLAGS) -> list[str]:
  """absl flag parsing with one-line errors naming the flag (no traceback, exit code 1)."""
  try:
    return flag_values(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for `--config.<key>` overrides of keys the config lacks.
    name = str(e).strip("'\" ")
    culprit = next((a.split("=")[0] for a in argv[1:]
                    if a.startswith("--config.") and name in a.split("=")[0]), "--config")
    sys.exit(f"lbjax: error: {culprit}: unknown config key {name!r} "
             "(configs/default.py lists every key)")
  except flags.UnrecognizedFlagError as e:
    sys.exit(f"lbjax: error: --{e.flagname}: unknown flag or config key "
             "(configs/default.py lists every key)")
  except flags.Error as e:
    message = str(e)
    if "Error whilst parsing config file" in message:  # ml_collections appends the traceback
      lines = [line for line in message.splitlines() if line.strip()]
      message = lines[0].replace("Error whilst parsing config file:", lines[-1])
    sys.exit(f"lbjax: error: {message}")


def switch_optimizers(flag_values: flags.FlagValues = FLAGS) -> None:
  """Rebuilds each optimizer block whose ``name`` was changed on the command line
  (`registry.switch_blocks`): the new optimizer's defaults, the config file's learning rate (a
  note on stderr says so unless it was set too) and the keys set for the block on the command line.

  ``--config.<key>`` flags come from ml_collections' record of the overrides it applied (both the
  ``--config.k=v`` and ``--config.k v`` spellings); the config file's name is the flag's default.
  """
  overrides = config_flags.get_override_values(flag_values["config"])
  before = {path: flag_values[f"config.{path}.name"].default for path in registry.BLOCKS
            if f"config.{path}.name" in flag_values}
  for path in registry.switch_blocks(flag_values.config, overrides, before):
    block = dotted.get(flag_values.config, path)
    print(f"lbjax: note: --config.{path}.name={block.name} keeps the config file's "
          f"config.{path}.learning_rate={block.learning_rate:g}; set "
          f"--config.{path}.learning_rate for {block.name}", file=sys.stderr, flush=True)


def failure_lines(e: WriteFailure) -> list[str]:
  """What the launcher prints on a storage failure: the one line, and a second one only when
  ``status.json`` could not be written either (it then still shows the run's last status)."""
  lines = [f"lbjax: error: {e.line()}"]
  if e.status_error is not None:
    lines.append(f"lbjax: error: status.json could not be written either ({e.status_error}); "
                 "it does not say failed")
  return lines


def main(argv, flag_values: flags.FlagValues = FLAGS):
  fv = flag_values
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  workdir_lib.quiet_storage_errors()  # a storage error is reported in one line (WriteFailure)
  try:
    fv.config.get("seed")  # ml_collections defers a config file's load error to first use
  except OSError as e:
    path = fv["config"].config_filename
    reason = "no such file" if not os.path.exists(path.split(":")[0]) else str(e.__cause__ or e)
    sys.exit(f"lbjax: error: --config={path}: cannot load the config file: {reason}")
  try:
    distributed.initialize(fv)
    switch_optimizers(fv)
    summary = runners.run(fv.config, fv.workdir)
  except ConfigError as e:
    sys.exit(f"lbjax: error: {e}")
  except WriteFailure as e:  # a full disk, a quota, permissions: one line, status.json "failed"
    for line in failure_lines(e):
      print(line, file=sys.stderr, flush=True)
    sys.exit(WriteFailure.EXIT_CODE)
  if summary["status"] == "diverged":
    sys.exit(3)
  if summary["status"] == "preempted":
    sys.exit(0)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
