"""The compiler settings of every test process (pytest's own, `tests/conftest.py`, and the
launcher and command processes the tests start), so numbers compared across processes come from
the same compiler settings.

The tests' programs are tiny: most tests' time goes to compiling them, not to running them.
Two settings trade a slower program for a faster compile; neither changes what is computed:

* XLA:CPU's older element-wise kernel emitter (``--xla_cpu_use_fusion_emitters=false``, in
  `flags`): a 4-device train step's first compile, LeNet-5 1.32 -> 0.54 s, K-FAC LeNet-5 2.37 ->
  0.80 s, resnet_tiny 1.64 -> 0.73 s (together with the next setting). Its LeNet-5 steps run as
  fast as the new emitter's (batch 256: 0.137 vs 0.131 s); BatchNorm ResNets' run slower (the
  resnet_tiny B_simple spread test, 240 steps: 37.6 s vs 26 s), a cost those tests now carry.
* JAX's ``jax_disable_most_optimizations`` (``JAX_DISABLE_MOST_OPTIMIZATIONS=1``, `ENV`: LLVM
  optimisation level 0 and none of its expensive passes) compiles ~30% faster but runs steps
  ~1.7x slower (LeNet-5 batch 256: 0.23 vs 0.137 s). Tests that run hundreds of steps turn it
  off for themselves (the ``optimized`` fixture of `tests/conftest.py`); it is a per-compile
  option, so the programs compiled before keep theirs.

Measured on the 2-core CPU: tests/test_optim_common.py 64 -> 26 s with both (and the compiled
programs kept between tests). The collective timeout is raised because a loaded machine can
delay one simulated device past XLA's default, which aborts the process.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAST_CODEGEN = "--xla_cpu_use_fusion_emitters=false"
COLLECTIVE_TIMEOUT = "--xla_cpu_collective_call_terminate_timeout_seconds=1200"
# Environment variables every test process gets (set by tests/conftest.py, inherited).
ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
# For a process a test starts that trains for hundreds of steps (the whole quickstart: 20.8 ->
# 13.6 s). Every process whose numbers a test compares with another's gets the same.
OPTIMIZED = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "0"}


def flags(devices: int) -> str:
  """``XLA_FLAGS`` for a process that sees ``devices`` simulated CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {COLLECTIVE_TIMEOUT} {FAST_CODEGEN}"


def process_env(devices: int, **extra: str) -> dict[str, str]:
  """The environment of a process a test starts: this process's (so `ENV`, set by
  `tests/conftest.py`), ``extra`` (e.g. ``**OPTIMIZED``), ``XLA_FLAGS`` for ``devices`` simulated
  CPU devices (`flags`) and the repository first on ``PYTHONPATH`` (``tests.*`` imports there)."""
  return dict(os.environ, **extra, XLA_FLAGS=flags(devices),
              PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
