"""The one loop (`lbjax.loop.run`) on a scripted Trainer: cadence, divergence, callback, replicas,
preemption."""

import os
import signal

import ml_collections
import numpy as np

from lbjax import loop
from lbjax import metrics as metrics_lib


def _config(**overrides):
  c = ml_collections.ConfigDict({"log_every_steps": 2, "eval_every_epochs": 1.0,
                                 "checkpoint_every_steps": 3, "progress_bar": False})
  c.update(overrides)
  return c


class Scripted:
  """A `lbjax.loop.Trainer` of scripted steps: step s (1-based) gives loss s, accuracy s/100
  (+ replica k/1000), finite unless s is ``bad_step``; its state is the number of steps taken.
  During step ``signal_at`` the process sends itself SIGTERM (a preemption notice)."""

  def __init__(self, *, bad_step=None, signal_at=None, num_replicas=1, examples_per_step=8,
               noise_scale=None):
    self.bad_step = bad_step
    self.signal_at = signal_at
    self.num_replicas = num_replicas
    self.examples_per_step = examples_per_step
    self.noise_scale = noise_scale
    self.taken = 0

  def step(self, step):
    assert step == self.taken, (step, self.taken)  # the loop asks for the steps in order
    self.taken += 1
    s, replicas = self.taken, self.num_replicas
    if s == self.signal_at:
      os.kill(os.getpid(), signal.SIGTERM)
    acc = np.array([[s / 100 + k / 1000] * 2 for k in range(replicas)])  # [replicas, copies]
    return {"loss": np.full((replicas, 2), float(s)), "accuracy": acc,
            "finite": np.full((replicas, 2), s != self.bad_step)}

  def host_state(self):
    return {"x": np.asarray(self.taken, np.int32)}

  def evaluate(self, step):
    return {"test_accuracy": step / 10}


def _run(tmp_path, total=10, *, config=None, bad_step=None, signal_at=None, num_replicas=1,
         **kwargs):
  config = config or _config()
  rec = loop.Recorder(str(tmp_path), keep=10, every=config.checkpoint_every_steps,
                      async_save=False)
  trainer = Scripted(bad_step=bad_step, signal_at=signal_at, num_replicas=num_replicas)
  out = loop.run(rec, trainer, start=0, total_steps=total,
                 cadence=loop.Cadence.from_config(config, steps_per_epoch=4.0), **kwargs)
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


def test_a_preemption_notice_saves_its_step_and_stops(tmp_path):
  handler = signal.getsignal(signal.SIGTERM)
  (status, step), saved, records = _run(tmp_path, signal_at=5)
  assert (status, step) == ("preempted", 5)
  assert saved == [3, 5]  # the preemption saves the step it stops at
  assert records[-1]["step"] == 5 and records[-1]["train_loss"] == 5.0  # its window flushed
  assert signal.getsignal(signal.SIGTERM) is handler  # the loop's handler is removed


def test_a_preemption_notice_at_the_last_step_completes_the_run(tmp_path):
  (status, step), saved, _ = _run(tmp_path, signal_at=10)
  assert (status, step) == ("completed", 10)
  assert saved == [3, 6, 9, 10]
