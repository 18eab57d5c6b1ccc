"""Runner: a normal data-parallel run = the one step (`lbjax.step`) driven by the one loop
(`lbjax.loop`).

`train_and_evaluate(config, workdir)` is the whole job: validate, build, restore the latest
checkpoint, loop, evaluate, checkpoint, and write ``status.json``. SWAP's phase 1 and every HPO
trial are such runs; `lbjax.runners.run` picks between this runner and `lbjax.swap`.

The config is validated by `lbjax.runners.run`, the one entry point; `Run` is the loop's
`lbjax.loop.Trainer` of a normal run.
"""

from typing import Any

import jax
import ml_collections

from lbjax import evaluation
from lbjax import loop
from lbjax import mesh as mesh_lib
from lbjax import step as step_lib
from lbjax import swa
from lbjax.errors import ConfigError


class Run:
  """A normal run's `lbjax.loop.Trainer`: the train state, replicated over ``mesh`` (default:
  every device of every process), and the programs that step and evaluate it.

  ``state`` is the current global state (a ``jax.Array`` tree, ``P()``); `step` replaces it by
  the train program's result (the old one is donated). With K-FAC's statistics every τ steps
  (``config.optimizer.factor_update_period``) there are two programs, with and without the
  capture, and the step index picks one (`lbjax.step.Experiment.statistics_at`).
  """

  def __init__(self, exp: step_lib.Experiment, state: step_lib.TrainState,
               mesh: jax.sharding.Mesh | None = None):
    self.exp = exp
    self.mesh = mesh or mesh_lib.data_mesh()
    self.train_program = exp.train_program(self.mesh)
    self.plain_program = (None if exp.plain_parts is None  # between K-FAC statistics steps
                          else exp.train_program(self.mesh, statistics=False))
    self.eval_program = exp.eval_program(self.mesh)
    self.state = mesh_lib.put_replicated(state, self.mesh)
    self.examples_per_step = exp.config.batch_size
    self.num_replicas = 1
    self.noise_scale = exp.noise_scale_batches(self.mesh.size)
    self._next = None  # the batch of the next step, put on the devices one step ahead

  def _batch(self, step: int):
    return self.exp.put_train_batch(step, self.mesh)

  def step(self, step: int):
    batch = self._next[1] if self._next is not None and self._next[0] == step else self._batch(
        step)
    if self.exp.statistics_at(step):
      self.state, metrics = self.train_program(self.state, batch)
    else:
      self.state, metrics = self.plain_program(self.state, batch)
    if step + 1 < self.exp.total_steps:  # the copy overlaps the running step
      self._next = (step + 1, self._batch(step + 1))
    return metrics

  def host_state(self) -> step_lib.TrainState:
    return mesh_lib.to_host(self.state)

  def evaluate(self, step: int | None = None, **kwargs) -> dict[str, float]:
    del step
    return evaluation.evaluate_splits(self.exp, self.eval_program, self.state.params,
                                      self.state.batch_stats, mesh=self.mesh, **kwargs)


def result_keys(results: dict[str, Any], use_swa: bool) -> dict[str, Any]:
  """``result_<split>_accuracy``: the accuracy of the model the run reports as its result (the
  SWA average with ``config.swa.enabled``, else the trained weights)."""
  prefix = "swa_" if use_swa else ""
  return {f"result_{name}_accuracy": results[f"{prefix}{name}_accuracy"]
          for name in ("test", "validation") if f"{prefix}{name}_accuracy" in results}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       callback: loop.Callback | None = None, *, step_offset: int = 0
                       ) -> dict[str, Any]:
  """Trains ``config`` in ``workdir``, resuming from its latest checkpoint; returns the summary.

  The summary has ``status`` (completed | diverged | preempted | stopped), ``step``, the final
  ``test_accuracy`` / ``test_loss`` (and ``validation_*`` when a validation split exists), with
  ``config.swa.enabled`` the SWA model's ``swa_*``, and ``result_test_accuracy`` (and
  ``result_validation_accuracy``): the accuracy of the model the run reports (`result_keys`).

  ``callback(step_offset + step, metrics)``, if given, runs after every evaluation (intermediate
  and final) with the metrics just written (``test_accuracy``, ``validation_accuracy``, ...); a
  true return at an intermediate evaluation saves a checkpoint and ends the run with status
  ``stopped`` (`lbjax.loop.run`). The metrics also hold ``train_accuracy`` / ``train_loss`` of the
  last logging window (SWAP's phase-1 training-accuracy threshold).

  The config and the workdir are checked by `lbjax.runners.run` (the one entry point), not
  here.

  Raises:
    ConfigError: a SWAP config (which `lbjax.runners.run` runs).
  """
  if config.get("swap") is not None and config.swap.enabled:
    raise ConfigError("config.swap.enabled", "a SWAP config is run by lbjax.runners.run")
  exp = step_lib.build(config)
  rec = loop.Recorder(workdir, keep=config.keep_checkpoints, every=config.checkpoint_every_steps,
                      timeout_secs=config.checkpoint_timeout_secs)
  rec.write_config(config)
  restored_step, state = rec.restore(exp.init_state())
  start, total = int(state.step), exp.total_steps
  if restored_step is not None:
    print(f"lbjax: resuming from step {start} of {total} ({workdir})", flush=True)
  rec.write_status("running", start)
  run = Run(exp, state)
  status, step = loop.run(rec, run, start=start, total_steps=total,
                          cadence=loop.Cadence.from_config(config, exp.steps_per_epoch),
                          callback=callback, step_offset=step_offset)
  results: dict[str, Any] = {}
  if status == "completed":
    results = run.evaluate(step)
    if swa.enabled(config):  # seed 000 eq. (1): the averaged weights, BatchNorm recomputed
      params, count = swa.averaged_params(run.state.opt_state)
      swa_results, _ = evaluation.evaluate_averaged(exp, run.eval_program, params,
                                                    run.state.batch_stats, prefix="swa_",
                                                    mesh=run.mesh)
      results.update(swa_results, swa_models=int(mesh_lib.to_host(count)))
      print(f"swa test accuracy: {results['swa_test_accuracy']:.4f} "
            f"({results['swa_models']} weights averaged)", flush=True)
    results.update(result_keys(results, swa.enabled(config)))
    rec.write_metrics(step, {**results, "epoch": step / exp.steps_per_epoch})
    if callback is not None:
      callback(step_offset + step, results)
  loop.close(rec)  # agreed: a storage error on any process ends all
  rec.write_status(status, step, total_steps=total, **results)
  if status == "completed":
    model = "SWA average, BatchNorm recomputed" if swa.enabled(config) else "trained weights"
    print(f"final test accuracy: {results['result_test_accuracy']:.4f} ({model})", flush=True)
  loop.print_outcome(status, step)
  return {"status": status, "step": step, **results}
