"""The XLA flags of every test process (pytest's own, `tests/conftest.py`, and the launcher and
command processes the tests start), so numbers compared across processes come from the same
compiler settings.

The tests' programs are tiny: their time goes to compiling them, not to running them. LLVM's
optimisation level 0 (``--xla_backend_optimization_level=0``) compiles a quickstart train step
~30% faster and LeNet-5's initialisation ~2x faster on this CPU (measured); it changes how XLA's
kernels are compiled, not what they compute. XLA:CPU's older element-wise kernel emitter
(``--xla_cpu_use_fusion_emitters=false``) halves compiling again (a 4-device train step, first
compile: LeNet-5 1.32 -> 0.54 s, K-FAC LeNet-5 2.37 -> 0.80 s, resnet_tiny 1.64 -> 0.73 s) for
~25% slower steps; tests/test_optim_common.py 64 -> 39 s. The collective timeout is raised because a loaded
machine can delay one simulated device past XLA's default, which aborts the process.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0"
FAST_CODEGEN = "--xla_cpu_use_fusion_emitters=false"
COLLECTIVE_TIMEOUT = "--xla_cpu_collective_call_terminate_timeout_seconds=1200"


def flags(devices: int) -> str:
  """``XLA_FLAGS`` for a process that sees ``devices`` simulated CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {COLLECTIVE_TIMEOUT} {FAST_COMPILE} {FAST_CODEGEN}"
