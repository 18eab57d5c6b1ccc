"""The one loop (`lbjax.loop.run`) on a scripted step: cadence, divergence, callback, replicas."""

import ml_collections
import numpy as np

from lbjax import loop
from lbjax import metrics as metrics_lib


def _config(**overrides):
  c = ml_collections.ConfigDict({"log_every_steps": 2, "eval_every_epochs": 1.0,
                                 "checkpoint_every_steps": 3, "progress_bar": False})
  c.update(overrides)
  return c


def _steps(total, *, bad_step=None, replicas=1):
  """Step s (1-based) yields loss s, accuracy s/100 (+ replica k/1000), finite unless bad."""
  for s in range(1, total + 1):
    acc = np.array([[s / 100 + k / 1000] * 2 for k in range(replicas)])  # [replicas, copies]
    yield {"loss": np.full((replicas, 2), float(s)), "accuracy": acc,
           "finite": np.full((replicas, 2), s != bad_step)}


def _run(tmp_path, total=10, **kwargs):
  rec = loop.Recorder(str(tmp_path), keep=10, async_save=False)
  state = {"step": 0}
  steps = _steps(total, bad_step=kwargs.pop("bad_step", None),
                 replicas=kwargs.get("num_replicas", 1))

  def counted():
    for m in steps:
      state["step"] += 1
      yield m

  out = loop.run(rec, kwargs.pop("config", _config()), start=0, total_steps=total,
                 steps=counted(), host_state=lambda: {"x": np.asarray(state["step"], np.int32)},
                 evaluate=lambda step: {"test_accuracy": step / 10}, steps_per_epoch=4.0,
                 examples_per_step=8, **kwargs)
  saved = rec.checkpointer.all_steps()
  rec.close()
  return out, saved, metrics_lib.read_metrics(str(tmp_path))


def test_cadence_and_window_means(tmp_path):
  (status, step), saved, records = _run(tmp_path)
  assert (status, step) == ("completed", 10)
  assert saved == [3, 6, 9, 10]  # every 3 steps and the end
  train = [r for r in records if "train_loss" in r]
  # Flushed at log steps (2, 4, ...), checkpoint steps (3, 9) and evaluation steps (4, 8).
  assert [r["step"] for r in train] == [2, 3, 4, 6, 8, 9, 10]
  assert train[0]["train_loss"] == 1.5 and train[1]["train_loss"] == 3.0  # means of windows
  evals = [r for r in records if "test_accuracy" in r]
  assert [(r["step"], r["test_accuracy"]) for r in evals] == [(4, 0.4), (8, 0.8)]


def test_divergence_stops_at_the_first_non_finite_step(tmp_path):
  (status, step), saved, records = _run(tmp_path, bad_step=5)
  assert (status, step) == ("diverged", 5)
  assert saved == [3]  # nothing saved after the bad step
  assert records[-1] == {"step": 5, "loss": 5.0, "diverged": 1}


def test_callback_sees_offset_steps_and_can_stop(tmp_path):
  seen = []

  def callback(step, metrics):
    seen.append((step, metrics["test_accuracy"], metrics["train_loss"]))
    return step == 108

  (status, step), saved, _ = _run(tmp_path, callback=callback, step_offset=100)
  assert (status, step) == ("stopped", 8)
  assert seen == [(104, 0.4, 4.0), (108, 0.8, 7.5)]  # last window: steps 7 and 8
  assert saved == [3, 6, 8]  # the stop saves its step


def test_replica_accuracies_are_written_one_by_one(tmp_path):
  _, _, records = _run(tmp_path, total=2, num_replicas=3)
  r = next(r for r in records if "train_replica_accuracy" in r)
  np.testing.assert_allclose(r["train_replica_accuracy"], [0.015, 0.016, 0.017])
  assert r["train_images_per_sec"] > 0
