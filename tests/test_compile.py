"""The train program and the eval program compile exactly once per run: no recompilation after
step 1.

A recompilation costs as much as the first compile (tens of seconds for a ResNet on CPU) and is
easy to introduce without noticing: a state whose arrays differ from the program's own outputs
in dtype, weak type or sharding makes the second call compile again (with jax 0.10, a state
replicated over a mesh whose axis has another name is enough). The train program donates the
replicated state and gets back its own outputs, so from step 2 on its arguments are the ones
it returned.

:class:`CompileCounter` listens to JAX's backend-compile event (``jax.monitoring``), which fires
once per XLA compilation and never for a cache hit, and attributes each compilation to the lbjax
source line that triggered it, the innermost frame in ``lbjax/``. The two ``jit(shard_map(...))``
programs (`lbjax.mesh.data_parallel`) are called on exactly two lines:
``self.train_program(self.state, batch)`` in `lbjax.train.Run.step` and
``eval_program(params, batch_stats, batch)`` in `lbjax.evaluation.evaluate`.
"""

import collections
import linecache
import os
import shutil
import sys
import types

import jax
import pytest

from configs import sweeps
from lbjax import mesh as mesh_lib
from lbjax import step as step_lib
from lbjax import train
from lbjax.optim import registry
from tests.test_train import small_config

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
LBJAX = os.path.dirname(os.path.abspath(train.__file__)) + os.sep  # .../lbjax/


@pytest.fixture(autouse=True)
def _no_persistent_cache():
  """JAX's persistent compilation cache (which `lbjax.hpo` points at a directory, and a test that
  runs it in-process leaves set) turns a compile into a cache hit, which fires no compile event;
  it is off here, where compiles are counted, and back to JAX's default afterwards."""
  jax.config.update("jax_enable_compilation_cache", False)
  yield
  jax.config.update("jax_enable_compilation_cache", True)


class CompileCounter:
  """Counts XLA compilations by the lbjax line that caused them (``with CompileCounter() as c``).

  ``c.calls(text)``: compilations whose triggering lbjax line contains ``text``.
  """

  def __init__(self):
    self.lines = collections.Counter()

  def _listener(self, event, duration, **kwargs):
    del duration, kwargs
    if event != BACKEND_COMPILE:
      return
    frame = sys._getframe(1)  # pylint: disable=protected-access
    while frame is not None and not os.path.abspath(frame.f_code.co_filename).startswith(LBJAX):
      frame = frame.f_back
    if frame is None:
      self.lines["<outside lbjax>"] += 1
      return
    self.lines[linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()] += 1

  def calls(self, text: str) -> int:
    return sum(n for line, n in self.lines.items() if text in line)

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listener)


def compile_config():
  # LeNet-5 at 8x8 (fast to compile) on 4 devices, 11 steps of 32; evaluation every 4 steps on
  # the test and validation splits (same padded shapes), checkpoints every 4 and a log flush
  # every 3 steps, so every host-side path of the loop runs between train steps.
  return small_config(**{"model.name": "lenet5", "image_size": 8, "num_epochs": 0.25,
                         "schedule.warmup_epochs": 0.0, "validation_fraction": 0.1,
                         "eval_every_epochs": 0.1, "eval_batch_size": 64, "log_every_steps": 3,
                         "checkpoint_every_steps": 4})


TRAIN_CALL = "self.train_program(self.state, batch)"
EVAL_CALL = "eval_program(params, batch_stats, batch)"


def test_a_run_and_its_resumption_compile_each_step_once(tmp_path):
  config = compile_config()
  workdir = str(tmp_path / "run")
  with CompileCounter() as first:
    summary = train.train_and_evaluate(config, workdir)
  assert summary["status"] == "completed" and summary["step"] == 11
  assert "validation_accuracy" in summary  # two eval splits went through the one eval step
  assert first.calls(TRAIN_CALL) == 1, first.lines
  assert first.calls(EVAL_CALL) == 1, first.lines

  # Resume from the step-8 checkpoint: the restored state must not trigger a second compile.
  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  assert 8 in steps and steps[-1] == 11
  shutil.rmtree(os.path.join(ckpt_dir, "11"))
  with CompileCounter() as resumed:
    summary = train.train_and_evaluate(config, workdir)
  assert summary["status"] == "completed" and summary["step"] == 11
  assert resumed.calls(TRAIN_CALL) == 1, resumed.lines
  assert resumed.calls(EVAL_CALL) == 1, resumed.lines


def test_the_train_program_takes_its_donated_outputs_without_compiling_again():
  # Each step donates the replicated state (its buffers are reused for the new one) and the
  # next step takes the program's own outputs: one compilation for every step.
  exp = step_lib.build(compile_config())
  run = train.Run(exp, exp.init_state())
  with CompileCounter() as counter:
    for step in range(3):
      before = run.state
      run.step(step)
      assert all(x.is_deleted() for x in jax.tree.leaves(before)), step  # donated
      assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(run.state))
  assert counter.calls(TRAIN_CALL) == 1, counter.lines


def test_the_counter_sees_a_recompilation(tmp_path, monkeypatch):
  # The bug the first test guards against: a replicated state that differs from the program's
  # outputs only in its sharding's mesh axis name compiles the train program a second time.
  def put_on_another_axis(tree, mesh):
    other = jax.sharding.Mesh(mesh.devices, ("another",))
    return jax.device_put(tree, jax.sharding.NamedSharding(other, jax.sharding.PartitionSpec()))

  patched = types.SimpleNamespace(**{**vars(mesh_lib), "put_replicated": put_on_another_axis})
  monkeypatch.setattr(train, "mesh_lib", patched)  # lbjax.train's initial state only
  with CompileCounter() as counter:
    summary = train.train_and_evaluate(compile_config(), str(tmp_path / "run"))
  assert summary["status"] == "completed"
  assert counter.calls(TRAIN_CALL) == 2, counter.lines


# K-FAC with statistics every 3 steps (issue 25): two train programs, with and without the
# capture, each called on its own line of `lbjax.train.Run.step`; with host accumulation, the
# host loop's three programs (`lbjax.accumulate.host_step`) for each of the two.
PLAIN_CALL = "self.plain_program(self.state, batch)"
HOST_CALLS = ("total = p_zeros(", "total = p_add(", "return p_apply(")


def kfac_period_config(**overrides):
  """`compile_config` with K-FAC's statistics at steps 0, 3, 6, 9 and inverses at 0, 6."""
  return sweeps.apply_overrides(compile_config(), {
      "optimizer": registry.config_block("kfac", learning_rate=0.01, damping=0.01,
                                         factor_update_period=3, inverse_update_period=6),
      **overrides}, where="test")


@pytest.mark.parametrize("accumulation", [None, "host"])
def test_kfac_every_third_step_compiles_two_train_programs_once(tmp_path, accumulation):
  """Statistics at steps 0, 3, 6, 9: the capture program and the plain one compile once each,
  in the run and in its resumption from step 8 (between statistics steps)."""
  overrides = {} if accumulation is None else {"micro_batch_size": 4,
                                               "accumulation": accumulation}
  config = kfac_period_config(**overrides)
  workdir = str(tmp_path / "run")
  for attempt in ("first", "resumed"):
    with CompileCounter() as counter:
      summary = train.train_and_evaluate(config, workdir)
    assert summary["status"] == "completed" and summary["step"] == 11, attempt
    assert counter.calls(EVAL_CALL) == 1, (attempt, counter.lines)
    if accumulation is None:
      assert counter.calls(TRAIN_CALL) == 1, (attempt, counter.lines)
      assert counter.calls(PLAIN_CALL) == 1, (attempt, counter.lines)
    else:  # 8 examples per device in micro-batches of 4: zeros, add, apply per program
      assert counter.calls(TRAIN_CALL) == counter.calls(PLAIN_CALL) == 0, counter.lines
      for call in HOST_CALLS:
        assert counter.calls(call) == 2, (attempt, call, counter.lines)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "11"))


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q"]))
