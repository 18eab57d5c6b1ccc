"""Every test process sees 4 simulated CPU devices, so each parallel code path is exercised."""

import atexit
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from tests import xla  # pylint: disable=g-import-not-at-top  (no jax: before it is imported)

# Four simulated devices, the collective timeout and the fast compile of every test process
# (`tests/xla.py`).
os.environ.setdefault("XLA_FLAGS", xla.flags(4))
for _name, _value in xla.ENV.items():
  os.environ.setdefault(_name, _value)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Four simulated devices on two cores can deadlock in an all-reduce unless XLA:CPU's thread pool
# has spare threads (lbjax/__init__.py explains); subprocesses inherit this.
os.environ.setdefault("NPROC", "16")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# JAX's persistent compilation cache, in a directory of this session that the launcher
# subprocesses the tests start share: a program compiled again (after `_free_compiled_programs`,
# or by another run of the same config) is read from disk instead (a quickstart run: 16 s -> 8 s).
# Every compile is cached (no minimum time or size). tests/test_compile.py turns it off to count
# compilations.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="lbjax-tests-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# After the environment above, which must be set before jax is first imported.
import gc

import jax
import pytest


def _mappings() -> int:
  """How many memory mappings this process has (Linux; 0 where /proc is missing)."""
  try:
    with open("/proc/self/maps", "rb") as f:
      return f.read().count(b"\n")
  except OSError:
    return 0


def _mapping_limit() -> int:
  try:
    with open("/proc/sys/vm/max_map_count") as f:
      return int(f.read())
  except (OSError, ValueError):
    return 65530


# Half the kernel's limit: one test adds at most a few thousand mappings.
MAPPING_BUDGET = _mapping_limit() // 2


@pytest.fixture
def optimized():
  """The test compiles its programs with XLA's optimisations on (`tests/xla.py`): for tests that
  run hundreds of steps, where the faster program outweighs the slower compile."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(autouse=True)
def _free_compiled_programs():
  """Frees the compiled programs once the process holds half the kernel's memory mappings.

  XLA:CPU maps each compiled program's code into the process (about three memory mappings per
  kernel), and JAX's caches keep them alive for the life of the process. One pytest process runs
  hundreds of trainings, so without this the process passes the kernel's mapping limit
  (`vm.max_map_count`, 65530 by default) and the next compile dies in XLA with SIGSEGV, no Python
  error. Measured here: one small 4-device training adds ~400-1500 mappings. Clearing after
  every test instead costs every test its re-tracing and recompiling of the programs that earlier
  tests share (the eager operations, the library's module-level jitted functions): 38.6 s -> 29.3
  s on tests/test_optim_common.py.
  """
  yield
  if _mappings() > MAPPING_BUDGET:
    jax.clear_caches()
    gc.collect()
