"""lbjax: large-batch training of image classifiers in JAX."""

import os as _os

__version__ = "0.1.0"


def _avoid_simulated_device_deadlock() -> None:
  """Gives XLA:CPU's intra-op thread pool enough threads for simulated devices.

  With ``--xla_force_host_platform_device_count=N`` on a machine of fewer cores, the devices
  share one Eigen pool sized by the core count. A device that reaches an all-reduce first
  waits for the others *on a pool thread*; once every pool thread waits so, the devices still
  computing get none and the step hangs (XLA aborts it after its collective timeout). Measured
  with jax 0.10.2 on 2 cores and 4 devices: the K-FAC quickstart hung within 3 runs; with a
  16-thread pool, 5 runs in a row completed. A smaller pool is not safe: the tests' K-FAC
  LeNet-5 run (68 steps, 4 devices, 2 cores) hung with ``NPROC=6`` until XLA's collective timeout,
  while 4 happened to complete (17.5 s) and 8 was no faster than 16 (29.4 vs 28.9 s). XLA
  reads the pool size from ``NPROC`` when the CPU backend starts (the first ``jax.devices()``),
  so this runs at import, before any use. It does nothing for real devices, for one CPU device,
  or when ``NPROC`` is already set.
  """
  if "xla_force_host_platform_device_count" in _os.environ.get("XLA_FLAGS", ""):
    _os.environ.setdefault("NPROC", "16")


_avoid_simulated_device_deadlock()
