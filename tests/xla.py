"""The XLA flags of every test process (pytest's own, `tests/conftest.py`, and the launcher and
command processes the tests start), so numbers compared across processes come from the same
compiler settings.

The tests' programs are tiny: their time goes to compiling them, not to running them. LLVM's
optimisation level 0 (``--xla_backend_optimization_level=0``) compiles a quickstart train step
~30% faster and LeNet-5's initialisation ~2x faster on this CPU (measured); it changes how XLA's
kernels are compiled, not what they compute. The collective timeout is raised because a loaded
machine can delay one simulated device past XLA's default, which aborts the process.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0"
COLLECTIVE_TIMEOUT = "--xla_cpu_collective_call_terminate_timeout_seconds=1200"


def flags(devices: int) -> str:
  """``XLA_FLAGS`` for a process that sees ``devices`` simulated CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {COLLECTIVE_TIMEOUT} {FAST_COMPILE}"
