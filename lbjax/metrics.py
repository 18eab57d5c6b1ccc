"""Metric writing: stdout, TensorBoard (tensorboardX), ``metrics.jsonl``; and the run status file.

Per-step metrics stay on device until `MetricWriter.write` is called every ``log_every_steps``
steps, so the train loop never waits for the device in between.
"""

from collections.abc import Mapping
import json
import os
from typing import Any

import numpy as np

from lbjax import workdir as workdir_lib

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"


def _py(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def echo_text(record: Mapping[str, Any]) -> str:
  """The stdout line of a record: ``key=value`` each, except that a family of per-layer series
  (keys ``<family>/<path>``, e.g. ``train_trust_ratio/Conv_0/kernel``) is summarised as
  ``<family>/*=[min, max] (n)``; metrics.jsonl and TensorBoard keep every series."""
  parts, families = [], {}
  for k, v in record.items():
    family, slash, _ = k.partition("/")
    if slash and isinstance(v, (int, float)):
      families.setdefault(family, []).append(v)
    else:
      parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
  parts += [f"{family}/*=[{min(vs):.4g}, {max(vs):.4g}] ({len(vs)})"
            for family, vs in families.items()]
  return ", ".join(parts)


class MetricWriter:
  """Writes scalars to stdout, TensorBoard and ``workdir/metrics.jsonl`` (primary host only)."""

  def __init__(self, workdir: str, enabled: bool = True, echo: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self.echo = echo
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      # The writer thread never flushes on its own (flush_secs): `write` flushes, so a full disk
      # is an error of this thread (`lbjax.workdir.WriteFailure`), not a dying writer thread.
      self._tb_dir = os.path.join(workdir, "tensorboard")
      with workdir_lib.writing(f"TensorBoard events in {self._tb_dir}"):
        self._tb = SummaryWriter(self._tb_dir, flush_secs=7 * 86400)

  def truncate_after(self, step: int) -> None:
    """Drops records newer than ``step`` (left by a run killed after its last checkpoint)."""
    path = os.path.join(self.workdir, METRICS_FILE)
    if not self.enabled or not os.path.exists(path):
      return
    with open(path) as f:
      keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with workdir_lib.writing(f"metrics in {path}"):
      with open(path + ".tmp", "w") as f:
        f.writelines(keep)
      os.replace(path + ".tmp", path)

  def write(self, step: int, scalars: Mapping[str, Any], prefix: str = "") -> None:
    if not self.enabled:
      return
    record = {f"{prefix}{k}": _py(v) for k, v in scalars.items()}
    path = os.path.join(self.workdir, METRICS_FILE)
    with workdir_lib.writing(f"metrics in {path}"), open(path, "a") as f:
      f.write(json.dumps({"step": int(step), **record}) + "\n")
    with workdir_lib.writing(f"TensorBoard events in {self._tb_dir}"):
      for k, v in record.items():
        if isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    if self.echo:
      print(f"[step {step}] {echo_text(record)}", flush=True)

  def flush(self) -> None:
    if self._tb is not None:
      with workdir_lib.writing(f"TensorBoard events in {self._tb_dir}"):
        self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      with workdir_lib.writing(f"TensorBoard events in {self._tb_dir}"):
        self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_status(workdir: str, status: str, step: int, **extra) -> None:
  """Atomically writes ``workdir/status.json``: running | completed | diverged | preempted |
  stopped | failed (a storage error: `lbjax.workdir.WriteFailure`)."""
  path = os.path.join(workdir, STATUS_FILE)
  with workdir_lib.writing(f"status in {path}"):
    with open(path + ".tmp", "w") as f:
      json.dump({"status": status, "step": int(step), **{k: _py(v) for k, v in extra.items()}},
                f, indent=1)
    os.replace(path + ".tmp", path)


def read_status(workdir: str) -> dict | None:
  path = os.path.join(workdir, STATUS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
