"""``benchmarks/device_suite.py`` (issue 17): its ``--smoke`` run end to end on CPU, and its pieces."""

import math
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import device_suite  # pylint: disable=wrong-import-position

from tests import xla
from tests.hang import HANG_SECONDS


def _tables(stdout: str) -> list[list[dict[str, str]]]:
  """Every Markdown table in ``stdout``: the sections streamed as measured, then the whole one."""
  tables, lines = [], stdout.splitlines()
  for i, line in enumerate(lines):
    if i + 1 < len(lines) and line.startswith("| measurement") and lines[i + 1].startswith("|-"):
      header = [c.strip() for c in line.strip("|").split("|")]
      body = []
      for row in lines[i + 2:]:
        if not row.startswith("|"):
          break
        body.append(dict(zip(header, (c.strip() for c in row.strip("|").split("|")))))
      tables.append(body)
  return tables


def _table(stdout: str) -> list[dict[str, str]]:
  """The final table; each of its rows was already printed, in order, as its section ended (a
  run cut off by a device-time limit keeps the sections it finished)."""
  *sections, final = _tables(stdout)
  assert sections and [r for t in sections for r in t] == final
  return final


def test_smoke_run_prints_the_table_and_the_ratio():
  """What the smoke run prints, not how long it takes (its time is a figure in BENCHMARKS.md;
  a test's result must not depend on how busy the machine is)."""
  # Two simulated devices: data parallel over 1 and 2 ("pmap" rows), SWAP replicas on both.
  env = xla.process_env(2)
  run = subprocess.run([sys.executable, "benchmarks/device_suite.py", "--smoke"], check=False,
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_SECONDS)
  assert run.returncode == 0, run.stderr[-3000:]

  rows = _table(run.stdout)
  got = {(r["measurement"], r["case"], r["global batch"]) for r in rows}
  for batch in device_suite.SMOKE["batches"]:
    for dtype in device_suite.DTYPES:
      assert ("throughput", f"lenet5 {dtype}", str(batch)) in got
  assert {("SWAP phase 2", "2 replicas, vmap", "16"), ("SWAP phase 2", "2 replicas, loop", "16"),
          ("K-FAC", "lenet5 kfac", "16"), ("K-FAC", "lenet5 sgd", "16"),
          ("pmap", "lenet5 on 1", "8"), ("pmap", "lenet5 on 2", "16")} <= got
  for r in rows:
    assert float(r["images/s"].replace(",", "")) > 0
  # The last line is the bfloat16 / float32 images/s at the ratio batch, as in the table.
  last = run.stdout.strip().splitlines()[-1]
  assert last.startswith("ratio: ")
  ratio = float(last.split(": ")[1])
  bf16 = [r for r in rows if r["case"] == "lenet5 bfloat16"
          and r["global batch"] == str(device_suite.SMOKE["ratio_batch"])]
  assert math.isfinite(ratio) and ratio > 0
  assert float(bf16[0]["ratio"]) == float(f"{ratio:.3f}")
  assert next(r["ratio"] for r in rows if r["measurement"] == "pmap") == "1.000"


def test_synthetic_data_is_cifar_shaped_and_seeded():
  data = device_suite.synthetic_data(64)
  assert data.train["image"].shape == (64, 32, 32, 3) and data.train["image"].dtype == np.uint8
  assert data.train["label"].min() >= 0 and data.train["label"].max() < 10
  np.testing.assert_array_equal(device_suite.synthetic_data(64).train["image"],
                                data.train["image"])
  np.testing.assert_allclose(data.mean, data.train["image"].reshape(-1, 3).mean(0) / 255, rtol=1e-5)
  assert data.std.shape == (3,) and np.all(data.std > 0)


def test_device_counts_and_replica_layout():
  assert device_suite.device_counts(1) == [1]
  assert device_suite.device_counts(6) == [1, 2, 4, 6]
  assert device_suite.device_counts(8) == [1, 2, 4, 8]
  assert device_suite.swap_replicas(4, 8) == 4
  assert device_suite.swap_replicas(4, 1) == 4
  assert device_suite.swap_replicas(4, 3) == 3
