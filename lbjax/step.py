"""The one train step: built once from a config, run by every runner (normal, SWAP, HPO trial).

`build(config)` gives an `Experiment`: data, model, optimizer (with SWA when ``config.swa``),
schedule and the per-device step functions. The train step is a pure function
``(state, batch) -> (state, metrics)`` with the named device axis `AXIS` (pmap's model,
launched as ``jit(shard_map(...))`` over a mesh, `lbjax.mesh`): gradients,
the loss, K-FAC statistics and BatchNorm statistics are averaged with ``lax.pmean`` over it, so
the result does not depend on the number of devices.

Everything a run's randomness depends on is *data* in the `TrainState`: ``state.seed`` fixes the
augmentation keys, SmoothOut's perturbation and K-FAC's sampled labels (`step_keys`), and the data
order is read with the same seed (`Experiment.train_batch`). So one compiled step serves every
SWAP replica: replica ``k`` is the state of seed ``k``'s run, not a step of its own.

The path of one batch through one step (``make_step_parts``):

  batch [b, ...] (rows of the seed's step-indexed stream, `lbjax.data.pipeline`)
  → per-example keys ``fold_in(fold_in(PRNGKey(state.seed), step), position)``
  → augmentation (`lbjax.data.augment`) → weights θ (+ δ with SmoothOut)
  → forward/backward (with K-FAC capture: also the layers' statistics; with statistics every
    τ steps, on those steps only: `Experiment.statistics_at`), per micro-batch
  → ``pmean`` over `AXIS` of gradients, loss, BatchNorm and K-FAC statistics
  → ``tx.update`` (optimizer, update noise, SWA average) → θ + u, metrics.

With ``config.log_noise_scale`` the step also records the two squared gradient norms of the
gradient noise scale (McCandlish et al. 2018 App. A.1, `lbjax.noise_scale`; the loop turns them
into B_simple): ``grad_sq_small``, the mean over devices and pieces of ``|g_piece|²`` for each
piece's own mean gradient (a piece is a micro-batch, else the device's batch, else on one device
half of it: the step then runs as two micro-batches of b/2, so with BatchNorm each half is
normalised with its own statistics, like Ghost BN of b/2; `lbjax.accumulate`), and
``grad_sq_big``, ``|g|²`` of the averaged gradient the optimizer applies.
"""

from collections.abc import Callable
import functools
from typing import Any, NamedTuple

from flax import struct
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lbjax import accumulate
from lbjax import config_lib
from lbjax import mesh as mesh_lib
from lbjax import models
from lbjax import noise_scale
from lbjax import schedules
from lbjax import swa
from lbjax.data import augment
from lbjax.data import datasets
from lbjax.data import pipeline
from lbjax.errors import ConfigError
from lbjax.optim import kfac_capture
from lbjax.optim import registry
from lbjax.optim import smoothout
from lbjax.optim import trust

AXIS = mesh_lib.AXIS  # the named device axis of every per-device program


class TrainState(struct.PyTreeNode):
  """A run's whole state. ``seed`` (int32) is the run's seed as data (see the module doc)."""
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  seed: jnp.ndarray


def create_model(config: ml_collections.ConfigDict, num_classes: int,
                 axis_name: str | None = AXIS) -> nn.Module:
  """``config.model``; its BatchNorm averages the batch moments over ``axis_name`` (None: each
  device normalises with its own)."""
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  return models.create(config.model.name, num_classes, axis_name=axis_name, **kwargs)


def init_state(model: nn.Module, tx: optax.GradientTransformation, image_shape, seed: int
               ) -> TrainState:
  """A fresh (unreplicated) train state; parameters from ``PRNGKey(seed)``.

  One compiled program (``jax.jit``, the seed an argument): the model's and the optimizer's
  initialisers run op by op otherwise, each op compiled on its own (seconds at start-up)."""

  @jax.jit
  def init(seed):
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *image_shape), jnp.float32),
                           train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      seed=seed)

  return init(jnp.asarray(seed, jnp.int32))


def cross_entropy(logits, targets):
  """Mean softmax cross-entropy against (possibly soft) targets [b, num_classes]."""
  return optax.softmax_cross_entropy(logits, targets).mean()


def soft_accuracy(logits, targets):
  """Mean target weight of the predicted class, ``mean_i targets_i[argmax logits_i]``.

  0/1 accuracy for one-hot targets; for CutMix's mixed targets the credit is the predicted
  label's share of the image (the expected 0/1 accuracy against a label drawn from the
  targets), so a tie between two labels needs no rule.
  """
  predicted = jnp.argmax(logits, -1)
  return jnp.mean(jnp.take_along_axis(targets, predicted[:, None], -1))


def step_keys(seed, step, positions):
  """Per-example keys: ``fold_in(fold_in(PRNGKey(seed), step), position)``.

  ``positions`` is each example's row in the global batch, so the keys, and with them the
  augmentation, do not depend on how the batch is split over devices and hosts. ``seed`` may be
  traced (``state.seed``).
  """
  step_key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
  return jax.vmap(lambda p: jax.random.fold_in(step_key, p))(positions)


def make_step_parts(model: nn.Module, tx: optax.GradientTransformation, *,
                    augment_mode: str, num_classes: int, mean, std,
                    learning_rate: optax.Schedule,
                    perturb: Callable | None = None,
                    capture: Callable | None = None,
                    log_noise_scale: bool = False,
                    own_model: nn.Module | None = None,
                    log_trust_ratios: bool = False) -> accumulate.StepParts:
  """The train step as ``StepParts(terms, apply)``: per-(micro-)batch means, then one update.

  ``perturb(params, step, seed)`` (SmoothOut, ``lbjax.optim.smoothout.from_config``): the
  gradient is taken at the perturbed weights and the update applied to the unperturbed ones.

  ``capture`` (K-FAC, ``lbjax.optim.kfac_capture.from_config``) replaces ``jax.value_and_grad``
  with the same forward/backward pass that also returns the layers' curvature statistics; they are
  averaged over AXIS and passed to ``tx.update`` as ``kfac_stats``.

  ``log_noise_scale`` (``config.log_noise_scale``): ``terms`` adds ``grad_sq``, the squared
  norm of its own mean gradient (accumulation averages it over micro-batches, ``apply`` over
  AXIS), and the metrics gain ``grad_sq_small`` (that average) and ``grad_sq_big`` (the squared
  norm of the gradient passed to ``tx.update``). Off, the step is exactly the one without them.
  The pieces (micro-batches, or halves on one device) come from the step around these parts
  (`lbjax.accumulate.scan_step`'s ``halves``).

  ``own_model`` (``log_noise_scale`` with BatchNorm whose moments are averaged over AXIS): on a
  device axis of more than one device, a piece's gradient in the training pass depends on the
  other devices' examples through the shared moments, so the pieces are not independent
  small-batch gradients and their spread says nothing about B_small. Then ``terms`` takes a
  second gradient of the same piece at the same weights through ``own_model`` (the model with
  each device's moments its own, as Ghost BN of the piece), and ``grad_sq_small`` /
  ``grad_sq_big`` are the squared norms of those piece gradients and of their mean: one more
  forward/backward per piece, for the measurement only (training uses the shared moments).

  ``log_trust_ratios`` (``config.log_trust_ratios``, `lbjax.config_lib.logs_trust_ratios`): the
  metrics gain ``trust_ratio/<parameter path>``, the layer-wise factor this update applied to
  each tensor (`lbjax.optim.trust_ratios`: LARS's λ_l, LAMB's ‖w‖/‖r‖; 1 outside LARS's mask).
  """

  def own_loss_fn(params, batch_stats, images, targets):
    logits, _ = own_model.apply({"params": params, "batch_stats": batch_stats}, images,
                                train=True, mutable=["batch_stats"])
    return cross_entropy(logits, targets)

  def loss_fn(params, batch_stats, images, targets):
    logits, new_vars = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                   train=True, mutable=["batch_stats"])
    return cross_entropy(logits, targets), (logits, new_vars.get("batch_stats", {}))

  def terms(state: TrainState, batch):
    """This device's means over ``batch`` (a micro-batch under accumulation)."""
    keys = step_keys(state.seed, state.step, batch["position"])
    images, targets = augment.apply(batch, keys, mode=augment_mode, num_classes=num_classes,
                                    mean=mean, std=std, train=True)
    # SmoothOut's δ depends on (seed, step) only, so every device of a run perturbs identically.
    grad_params = (state.params if perturb is None
                   else perturb(state.params, state.step, seed=state.seed))
    stats = None
    if capture is None:
      (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          grad_params, state.batch_stats, images, targets)
    else:
      (loss, (logits, batch_stats)), grads, stats = capture(
          grad_params, state.batch_stats, images, targets, keys)
    out = {"loss": loss, "accuracy": soft_accuracy(logits, targets), "grads": grads,
           "batch_stats": batch_stats, "kfac_stats": stats}
    if log_noise_scale:  # |G_{B_small}|² of this piece (McCandlish et al. 2018 App. A.1)
      piece = grads
      if own_model is not None and lax.axis_size(AXIS) > 1:  # shared moments: see the doc
        piece = jax.grad(own_loss_fn)(grad_params, state.batch_stats, images, targets)
        out["grads_own"] = piece
      out["grad_sq"] = noise_scale.squared_norm(piece)
    return out

  def apply(state: TrainState, terms):
    # Gradients, loss and K-FAC statistics averaged over AXIS. BatchNorm already normalises
    # with global-batch statistics (axis_name); averaging the running statistics also keeps
    # devices identical when ghost batches are local.
    terms = lax.pmean(terms, AXIS)
    extra_args = {} if capture is None else {"kfac_stats": terms["kfac_stats"]}
    grads, batch_stats, loss = terms["grads"], terms["batch_stats"], terms["loss"]
    updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra_args)
    params = optax.apply_updates(state.params, updates)
    param_norm = optax.tree.norm(params)
    update_norm = optax.tree.norm(updates)
    metrics = {
        "loss": loss,
        "accuracy": terms["accuracy"],
        "learning_rate": learning_rate(state.step),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": param_norm,
        "update_norm": update_norm,
        "update_ratio": update_norm / (param_norm + 1e-12),
        "finite": jnp.isfinite(loss) & jnp.isfinite(param_norm),
    }
    if log_noise_scale:
      metrics["grad_sq_small"] = terms["grad_sq"]
      if "grads_own" in terms:  # the mean of the pieces' own gradients (``own_model``)
        metrics["grad_sq_big"] = noise_scale.squared_norm(terms["grads_own"])
      else:
        metrics["grad_sq_big"] = metrics["grad_norm"] ** 2  # |G_{B_big}|², no second pass
    if log_trust_ratios:  # what LARS/LAMB users debug with: each layer's factor of this update
      metrics.update(trust.trust_ratio_metrics(opt_state))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return accumulate.StepParts(terms, apply)


def make_eval_step(model: nn.Module, *, num_classes: int, mean, std, augment_mode: str
                   ) -> Callable:
  """Per-device ``(params, batch_stats, batch) -> sums``; padded examples have mask 0."""

  def eval_step(params, batch_stats, batch):
    keys = jax.random.split(jax.random.PRNGKey(0), batch["label"].shape[0])
    images, targets = augment.apply(batch, keys, mode=augment_mode, num_classes=num_classes,
                                    mean=mean, std=std, train=False)
    logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
    mask = batch["mask"]
    losses = optax.softmax_cross_entropy(logits, targets)
    correct = jnp.argmax(logits, -1) == batch["label"]
    sums = {"loss": jnp.sum(losses * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}
    return lax.psum(sums, AXIS)

  return eval_step


class Experiment(NamedTuple):
  """Everything built from a config, shared by training, SWAP, HPO, benchmarks and tests."""
  config: ml_collections.ConfigDict
  data: datasets.Dataset
  model: nn.Module
  tx: optax.GradientTransformation
  learning_rate: optax.Schedule
  steps_per_epoch: float
  total_steps: int
  train_step: Callable      # per-device (state, batch) -> (state, metrics), named axis AXIS
  eval_step: Callable       # per-device (params, batch_stats, batch) -> sums
  train_parts: accumulate.StepParts  # train_step's pieces, for accumulation on the host
  # The step without K-FAC's statistics capture, for the steps between statistics
  # (config.optimizer.factor_update_period > 1, `statistics_at`); None: every step captures.
  plain_parts: accumulate.StepParts | None = None

  def init_state(self) -> TrainState:
    return init_state(self.model, self.tx, self.data.train["image"].shape[1:], self.config.seed)

  def statistics_at(self, step: int) -> bool:
    """Whether train step ``step`` (the host's index, = ``state.step``) runs the program with
    K-FAC's statistics capture: with ``config.optimizer.factor_update_period = τ > 1`` the
    steps ``step % τ == 0``, else every step (with or without a capture, there is one program).

    The runners pick the program by it (`train_program`'s ``statistics``); K-FAC's update
    counts the same steps in its state (`lbjax.optim.kfac.ScaleByKFACState.count`), and
    returns NaN updates when a statistics step comes without statistics."""
    return self.plain_parts is None or step % kfac_capture.factor_update_period(
        self.config.optimizer) == 0

  def _parts(self, statistics: bool) -> accumulate.StepParts:
    if statistics:
      return self.train_parts
    if self.plain_parts is None:
      raise ValueError("every step of this config runs the one train program (no K-FAC "
                       "statistics every config.optimizer.factor_update_period > 1 steps)")
    return self.plain_parts

  def device_step(self, statistics: bool = True) -> Callable:
    """The per-device ``(state, batch) -> (state, metrics)`` (named axis AXIS): `train_step`,
    or with ``statistics=False`` the step without K-FAC's capture (`statistics_at`)."""
    return self.train_step if statistics else _scan_step(self.config, self._parts(False))

  def train_program(self, mesh: jax.sharding.Mesh | None = None, *, statistics: bool = True
                    ) -> Callable:
    """The host-level ``(state, batch) -> (state, metrics)`` on ``mesh`` (default: every
    device, `lbjax.mesh.data_mesh`): ``jit(shard_map(train_step))`` with the state replicated
    (``P()``, donated) and the batch a global array sharded over ``"batch"``
    (`put_train_batch`), or the host loop of micro-steps when ``config.accumulation``
    resolves to ``"host"`` (``lbjax/accumulate.py``). Metrics come back replicated.

    ``statistics=False``: the program of the steps between K-FAC's statistics (the plain
    forward/backward pass, no ``kfac_stats``), only with ``config.optimizer.factor_update_period
    > 1`` (ValueError otherwise); step ``s`` runs ``train_program(mesh,
    statistics=statistics_at(s))``. Both programs return the same state and metrics."""
    return accumulate.launch_train_step(
        self._parts(statistics), self.config.get("micro_batch_size"),
        self.config.get("accumulation", "auto"), mesh=mesh or mesh_lib.data_mesh(),
        halves=bool(self.config.get("log_noise_scale", False)))

  def noise_scale_batches(self, device_count: int) -> tuple[int, int] | None:
    """``(b_small, b_big)`` of the step's ``grad_sq_small`` / ``grad_sq_big`` when it runs
    data-parallel over ``device_count`` devices (`lbjax.noise_scale.batch_sizes`); None
    without ``config.log_noise_scale``."""
    if not self.config.get("log_noise_scale", False):
      return None
    b_small, b_big, _ = noise_scale.batch_sizes(self.config.batch_size, device_count,
                                                self.config.get("micro_batch_size"))
    return b_small, b_big

  def eval_program(self, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """The host-level ``(params, batch_stats, batch) -> sums`` on ``mesh`` (default: every
    device): weights replicated, batch sharded over ``"batch"``, sums replicated."""
    return mesh_lib.data_parallel(self.eval_step, mesh or mesh_lib.data_mesh(),
                                  in_specs=(mesh_lib.P(), mesh_lib.P(), mesh_lib.P(AXIS)),
                                  out_specs=mesh_lib.P())

  def train_batch(self, step: int, local_device_count: int | None = None,
                  seed: int | None = None, process_index: int | None = None,
                  process_count: int | None = None) -> pipeline.Batch:
    """Global batch ``step`` of the stream of ``seed`` (default ``config.seed``), the rows of
    process ``process_index`` of ``process_count`` (default: this one of all) split over
    ``local_device_count`` devices (default: all local)."""
    return pipeline.train_batch(
        self.data.train, step, batch_size=self.config.batch_size,
        seed=self.config.seed if seed is None else seed,
        process_index=jax.process_index() if process_index is None else process_index,
        process_count=jax.process_count() if process_count is None else process_count,
        local_device_count=local_device_count or jax.local_device_count())

  def put_train_batch(self, step: int, mesh: jax.sharding.Mesh | None = None,
                      seed: int | None = None):
    """Global batch ``step`` (stream of ``seed``) as one global array sharded over ``mesh``'s
    ``"batch"`` axis, each process contributing its own rows (`lbjax.mesh.put_batch`)."""
    mesh = mesh or mesh_lib.data_mesh()
    return mesh_lib.put_batch(self.train_batch(step, mesh_lib.local_device_count(mesh), seed),
                              mesh)


def _has_batch_norm(model: nn.Module, data: datasets.Dataset) -> bool:
  """Whether ``model`` keeps BatchNorm statistics (traced abstractly: nothing is computed)."""
  image = jax.ShapeDtypeStruct((1, *data.train["image"].shape[1:]), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), image)
  return bool(jax.tree.leaves(variables.get("batch_stats", {})))


def _own_model(config: ml_collections.ConfigDict, model: nn.Module, data: datasets.Dataset
               ) -> nn.Module | None:
  """The noise scale's ``own_model`` (`make_step_parts`): ``config.model`` with each device's
  BatchNorm moments its own, when ``config.log_noise_scale`` is on and the model's BatchNorm
  shares its moments across devices (BatchNorm without ghost batches); else None."""
  if not config.get("log_noise_scale", False) or not _has_batch_norm(model, data):
    return None
  if config.model.get("ghost_batch_size") is not None:
    return None  # ghost batches are normalised with their own moments already
  return create_model(config, data.num_classes, axis_name=None)


def load_data(config: ml_collections.ConfigDict) -> datasets.Dataset:
  return datasets.load(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                       validation_fraction=config.validation_fraction, seed=config.seed)


def build(config: ml_collections.ConfigDict, data: datasets.Dataset | None = None
          ) -> Experiment:
  """Builds data, model, optimizer and the per-device step functions of ``config``."""
  data = load_data(config) if data is None else data
  num_train = len(data.train["label"])
  steps_per_epoch = config_lib.steps_per_epoch(num_train, config.batch_size)
  total_steps = config_lib.total_steps(config.num_epochs, num_train, config.batch_size)
  learning_rate = schedules.build_learning_rate(config, steps_per_epoch, total_steps)
  tx = registry.from_config(config, learning_rate, total_steps)
  tx = swa.from_config(config, tx, steps_per_epoch)  # config.swa: W_swa kept in opt_state
  model = create_model(config, data.num_classes)
  if config.model.get("ghost_batch_size") is not None and not _has_batch_norm(model, data):
    raise ConfigError("config.model.ghost_batch_size",
                      f"model {config.model.name!r} has no BatchNorm layers, so ghost batches "
                      "cannot act; leave it unset")
  mean, std = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)
  step_parts = functools.partial(make_step_parts, model, tx, augment_mode=config.augment,
                                 num_classes=data.num_classes, mean=mean, std=std,
                                 learning_rate=learning_rate,
                                 perturb=smoothout.from_config(config, total_steps),
                                 log_noise_scale=bool(config.get("log_noise_scale", False)),
                                 own_model=_own_model(config, model, data),
                                 log_trust_ratios=config_lib.logs_trust_ratios(config))
  train_parts = step_parts(capture=kfac_capture.from_config(config.optimizer, model,
                                                            cross_entropy))
  # K-FAC's statistics every τ steps: the other steps run the step without the capture.
  plain_parts = step_parts() if kfac_capture.factor_update_period(config.optimizer) > 1 else None
  eval_step = make_eval_step(model, num_classes=data.num_classes, mean=mean, std=std,
                             augment_mode=config.augment)
  return Experiment(config, data, model, tx, learning_rate, steps_per_epoch, total_steps,
                    _scan_step(config, train_parts), eval_step, train_parts, plain_parts)


def _scan_step(config: ml_collections.ConfigDict, parts: accumulate.StepParts) -> Callable:
  """The per-device train step of ``parts`` with ``config``'s micro-batches and halves."""
  return accumulate.scan_step(parts, config.get("micro_batch_size"),
                              halves=bool(config.get("log_noise_scale", False)), axis_name=AXIS)
