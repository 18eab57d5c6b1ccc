"""Runner: a normal data-parallel run = the one step (`lbjax.step`) driven by the one loop
(`lbjax.loop`).

`train_and_evaluate(config, workdir)` is the whole job: validate, build, restore the latest
checkpoint, loop, evaluate, checkpoint, and write ``status.json``. SWAP's phase 1 and every HPO
trial are such runs; `lbjax.runners.run` picks between this runner and `lbjax.swap`.

The step's names are re-exported here (``train.build``, ``train.AXIS``, ...) for the scripts
that use them; they live in `lbjax.step` and `lbjax.evaluation`.
"""

from typing import Any

import jax
import ml_collections

from lbjax import config_lib
from lbjax import evaluation
from lbjax import loop
from lbjax import swa
from lbjax.data import pipeline
from lbjax.errors import ConfigError
from lbjax.evaluation import evaluate  # noqa: F401  (re-exported)
from lbjax.step import AXIS  # noqa: F401
from lbjax.step import Experiment  # noqa: F401
from lbjax.step import TrainState  # noqa: F401
from lbjax.step import build
from lbjax.step import cross_entropy  # noqa: F401
from lbjax.step import make_eval_step  # noqa: F401
from lbjax.step import make_step_parts  # noqa: F401
from lbjax.step import replicate
from lbjax.step import soft_accuracy  # noqa: F401
from lbjax.step import step_keys  # noqa: F401
from lbjax.step import unreplicate


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

  Raises:
    ConfigError: a bad config, a workdir of another config, or a SWAP config (which
      `lbjax.runners.run` runs).
  """
  if config.get("swap") is not None and config.swap.enabled:
    raise ConfigError("config.swap.enabled", "a SWAP config is run by lbjax.runners.run")
  config_lib.validate(config, device_count=jax.device_count(), process_count=jax.process_count())
  config_lib.check_workdir(config, workdir)
  exp = build(config)
  rec = loop.Recorder(workdir, keep=config.keep_checkpoints)
  rec.write_config(config)
  restored_step, state = rec.restore(exp.init_state())
  start, total = int(state.step), exp.total_steps
  if restored_step is not None:
    print(f"lbjax: resuming from step {start} of {total} ({workdir})", flush=True)
  rec.write_status("running", start)

  p_train_step = exp.pmap_train_step()
  p_eval_step = exp.pmap_eval_step()
  state = replicate(state)

  def steps():
    nonlocal state
    batches = (exp.train_batch(s) for s in range(start, total))
    for batch in pipeline.prefetch_to_device(batches, 2):
      state, metrics = p_train_step(state, batch)
      yield metrics

  def evaluate_now(step: int) -> dict[str, float]:
    del step
    return evaluation.evaluate_splits(exp, p_eval_step, state.params, state.batch_stats)

  status, step = loop.run(rec, config, start=start, total_steps=total, steps=steps(),
                          host_state=lambda: unreplicate(state), evaluate=evaluate_now,
                          steps_per_epoch=exp.steps_per_epoch,
                          examples_per_step=config.batch_size, callback=callback,
                          step_offset=step_offset,
                          noise_scale=exp.noise_scale_batches(jax.device_count()))
  results: dict[str, Any] = {}
  if status == "completed":
    results = evaluate_now(step)
    if swa.enabled(config):  # seed 000 eq. (1): the averaged weights, BatchNorm recomputed
      params, count = swa.averaged_params(state.opt_state)
      swa_results, _ = evaluation.evaluate_averaged(exp, p_eval_step, params, state.batch_stats,
                                                    prefix="swa_")
      results.update(swa_results, swa_models=int(jax.device_get(count)[0]))
      print(f"swa test accuracy: {results['swa_test_accuracy']:.4f} "
            f"({results['swa_models']} weights averaged)", flush=True)
    results.update(result_keys(results, swa.enabled(config)))
    rec.write_metrics(step, {**results, "epoch": step / exp.steps_per_epoch})
    if callback is not None:
      callback(step_offset + step, results)
  rec.close()
  rec.write_status(status, step, total_steps=total, **results)
  if status == "completed":
    model = "SWA average, BatchNorm recomputed" if swa.enabled(config) else "trained weights"
    print(f"final test accuracy: {results['result_test_accuracy']:.4f} ({model})", flush=True)
  loop.print_outcome(status, step)
  return {"status": status, "step": step, **results}
