"""Multi-host launch: the flags every launcher shares and `jax.distributed.initialize`.

One process per host: ``--coordinator_address``, ``--num_processes`` and ``--process_id`` (or
``LBJAX_COORDINATOR_ADDRESS``, ``LBJAX_NUM_PROCESSES``, ``LBJAX_PROCESS_ID``); on Cloud TPU and
SLURM ``--distributed`` alone lets ``jax.distributed.initialize()`` detect them. On CPU the
collectives across processes go through gloo. ``jax.distributed`` also starts JAX's preemption
service, with which the loop agrees on the step to stop at (`lbjax.loop.Agreement`).
"""

import os

from absl import flags
import jax

from lbjax.errors import ConfigError


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the multi-host flags on ``flag_values``."""
  flags.DEFINE_string("coordinator_address", os.environ.get("LBJAX_COORDINATOR_ADDRESS"),
                      "host:port of process 0, for multi-host training.", flag_values=flag_values)
  flags.DEFINE_integer("num_processes", int(os.environ.get("LBJAX_NUM_PROCESSES", "0")) or None,
                       "Number of processes (hosts) in a multi-host job.",
                       flag_values=flag_values)
  flags.DEFINE_integer("process_id", int(os.environ.get("LBJAX_PROCESS_ID", "-1")),
                       "This process's id in a multi-host job.", flag_values=flag_values)
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detected "
                    "settings (TPU pods, SLURM).", flag_values=flag_values)


def initialize(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """`initialize_from` the flags of `define_flags`."""
  fv = flag_values
  initialize_from(fv.coordinator_address, fv.num_processes, fv.process_id, auto=fv.distributed)


def initialize_from(coordinator_address, num_processes, process_id, auto=False) -> None:
  """`jax.distributed.initialize` when multi-host settings are given; CPU collectives via gloo."""
  if not (coordinator_address or auto):
    return
  if coordinator_address and (num_processes is None or process_id < 0):
    raise ConfigError("--num_processes/--process_id",
                      "multi-host needs --coordinator_address, --num_processes and --process_id")
  if jax.config.jax_platforms in (None, "", "cpu") or jax.default_backend() == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
