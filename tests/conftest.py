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


@pytest.fixture(autouse=True)
def _free_compiled_programs():
  """Frees every compiled program after each test.

  XLA:CPU maps each compiled program's code into the process (about three memory mappings per
  kernel), and JAX's caches keep them alive for the life of the process. One pytest process runs
  hundreds of trainings, so without this the process passes the kernel's mapping limit
  (`vm.max_map_count`, 65530 by default) and the next compile dies in XLA with SIGSEGV, no Python
  error. Measured here: one small 4-device training adds ~400-1500 mappings; this frees them.
  """
  yield
  jax.clear_caches()
  gc.collect()
