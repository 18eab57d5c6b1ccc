"""Where K-FAC's statistics come from: the training forward/backward pass of any flax model.

:func:`make_capture` returns a drop-in replacement for
``jax.value_and_grad(loss_fn, has_aux=True)`` in the train step that also returns the K-FAC
statistics of the batch. While it runs ``model.apply`` it installs a flax method interceptor
(``nn.intercept_methods``) around every ``nn.Dense`` and ``nn.Conv`` call, which

* computes the layer's input factor ``A`` from its input (for a convolution, from its KFC patches)
  in the forward pass and ``sow``-s it into the collection ``kfac_inputs``;
* adds a zero ``perturb``-ation (collection ``kfac_outputs``) to the layer's pre-activation output
  ``s``, so the backward pass that computes the parameter gradient also yields ``dL/ds``, from
  which ``G`` is formed.

Nothing changes for the model code (``lbjax/models/layers.py`` creates the layers as usual), and
nothing is captured outside :func:`make_capture`: SGD, evaluation and every other optimizer run the
model without the interceptor, at no cost. With ``config.optimizer.factor_update_period = τ > 1``
(:func:`factor_update_period`) K-FAC's train step captures on the steps ``step % τ == 0`` only
and runs the plain ``jax.value_and_grad`` pass on the others (``lbjax.step``: two compiled
programs, chosen by the host from the step index).

Covered: ``nn.Dense`` (extra leading axes count as locations) and 1-D to 3-D ``nn.Conv`` without
feature groups, dilation, mask or ``CIRCULAR``/``CAUSAL`` padding. Other layers are not captured;
their parameters keep the identity preconditioner, i.e. plain momentum SGD. A layer applied more
than once per step (weight sharing) is refused.
"""

from collections.abc import Callable

from flax import traverse_util
import flax.linen as nn
from flax.linen import linear as flax_linear
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections

from lbjax.errors import check_choice
from lbjax.optim import checks
from lbjax.optim.kfac import conv_input_factor
from lbjax.optim.kfac import dense_input_factor
from lbjax.optim.kfac import output_factor
from lbjax.optim.rng import KFAC_SAMPLE_SALT

INPUTS = "kfac_inputs"
OUTPUTS = "kfac_outputs"
OPTIMIZERS_WITH_STATISTICS = ("kfac",)
FISHER_TYPES = ("empirical", "sampled")
DEFAULT_FISHER = "empirical"
# Keys of ``config.optimizer`` that configure the capture, not the optimizer's factory, with
# their defaults (``lbjax.optim.registry`` accepts them for the optimizers above).
CONFIG_KEYS = {"fisher": DEFAULT_FISHER}


def _conv_geometry(module: nn.Conv, x: jax.Array):
  """``(kernel_size, strides, explicit padding)`` of a supported convolution call, else None."""
  kernel_size = tuple(module.kernel_size)
  n = len(kernel_size)
  if (module.feature_group_count != 1 or module.mask is not None or x.ndim != n + 2 or n > 3
      or any(d != 1 for d in _tuple(module.kernel_dilation, n))
      or any(d != 1 for d in _tuple(module.input_dilation, n))):
    return None
  strides = _tuple(module.strides, n)
  padding = flax_linear.canonicalize_padding(module.padding, n)
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      return None
    padding = lax.padtype_to_pads(x.shape[1:-1], kernel_size, strides, padding)
  return kernel_size, strides, tuple(tuple(p) for p in padding)


def _tuple(value, n):
  if value is None:
    return (1,) * n
  if isinstance(value, int):
    return (value,) * n
  return tuple(value)


def _input_factor(module: nn.Module, x: jax.Array) -> jax.Array | None:
  """The layer's A for input ``x``, or None when the layer is not covered."""
  x = lax.stop_gradient(x)
  if isinstance(module, nn.Dense):
    return dense_input_factor(x, module.use_bias)
  if isinstance(module, nn.Conv):
    geometry = _conv_geometry(module, x)
    return None if geometry is None else conv_input_factor(x, *geometry, module.use_bias)
  return None


def _store_once(previous, value):
  if previous is not None:
    raise ValueError("K-FAC: a Dense/Conv layer is applied more than once per step (weight "
                     "sharing); its Kronecker blocks are not defined")
  return value


def _interceptor(next_fun, args, kwargs, context):
  module = context.module
  if context.method_name != "__call__" or not isinstance(module, (nn.Dense, nn.Conv)):
    return next_fun(*args, **kwargs)
  x = args[0] if args else kwargs["inputs"]
  factor = _input_factor(module, x)
  y = next_fun(*args, **kwargs)
  if factor is None:
    return y
  module.sow(INPUTS, "a", factor, reduce_fn=_store_once, init_fn=lambda: None)
  return module.perturb("ds", y, collection=OUTPUTS)


def _flat(tree) -> dict[str, jax.Array]:
  """``{"conv1": {"a": x}}`` → ``{"conv1": x}`` (the layer's ``/``-joined module path)."""
  return {k.rpartition("/")[0]: v
          for k, v in traverse_util.flatten_dict(dict(tree), sep="/").items()}


def make_capture(model: nn.Module, loss: Callable, fisher: str = DEFAULT_FISHER) -> Callable:
  """The train step's gradient computation with K-FAC statistics.

  Args:
    model: a flax module called as ``model.apply(variables, images, train=True)``.
    loss: ``loss(logits, targets) -> scalar``, the mean over the (per-device) batch.
    fisher: how ``G`` is estimated (``config.optimizer.fisher``). ``"empirical"`` (default) uses
      the per-example gradients of the training loss with the true labels, free in the training
      backward pass; ``"sampled"`` uses labels drawn from the model's predictive distribution
      ``softmax(logits)`` with the per-example ``keys`` (the true Fisher; kfac-jax's default
      "fisher_gradients"), at the cost of one more backward pass from the logits to the layer
      outputs (the parameter gradient is unaffected). kfac-jax's "fisher_empirical" is the
      empirical ``G`` divided once more by the batch size.

  Returns:
    ``capture(params, batch_stats, images, targets, keys) -> ((loss, (logits, batch_stats)),
    grads, stats)``: the first two as ``jax.value_and_grad(loss_fn, has_aux=True)`` returns them
    for the same forward pass, and ``stats = {layer: {"a": A, "g": G}}`` of this device's batch
    (``pmean`` them over the data axis before ``tx.update(..., kfac_stats=stats)``). ``keys`` are
    per-example PRNG keys (only used by ``"sampled"``); deriving them from each example's position
    in the global batch makes the result independent of the device count.
  """
  if fisher not in FISHER_TYPES:
    raise checks.InvalidArgument("fisher", f"unknown value {fisher!r}; allowed: "
                                 f"{', '.join(FISHER_TYPES)}")

  def capture(params, batch_stats, images, targets, keys):
    def forward(params, perturbations):
      variables = {"params": params, "batch_stats": batch_stats, OUTPUTS: perturbations}
      with nn.intercept_methods(_interceptor):
        logits, new_vars = model.apply(variables, images, train=True,
                                       mutable=["batch_stats", INPUTS])
      return logits, (new_vars.get("batch_stats", {}), new_vars.get(INPUTS, {}))

    with nn.intercept_methods(_interceptor):
      shapes = jax.eval_shape(
          lambda: model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                              mutable=["batch_stats", INPUTS, OUTPUTS])[1].get(OUTPUTS, {}))
    perturbations = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    logits, vjp, (new_batch_stats, inputs) = jax.vjp(forward, params, perturbations, has_aux=True)
    loss_value, logits_grad = jax.value_and_grad(loss)(logits, targets)
    grads, output_grads = vjp(logits_grad)
    if fisher == "sampled":
      # d(mean_n -log p(y_n | x_n))/dlogits with y_n ~ softmax(logits_n); the parameter part of
      # this second backward pass is unused and removed by XLA.
      draw = lambda k, l: jax.random.categorical(jax.random.fold_in(k, KFAC_SAMPLE_SALT), l)
      labels = jax.vmap(draw)(keys, lax.stop_gradient(logits))
      probs = jax.nn.softmax(lax.stop_gradient(logits).astype(jnp.float32))
      sampled_grad = (probs - jax.nn.one_hot(labels, logits.shape[-1])) / logits.shape[0]
      _, output_grads = vjp(sampled_grad.astype(logits.dtype))
    a, ds = _flat(inputs), _flat(output_grads)
    stats = {name: {"a": a[name], "g": output_factor(ds[name])} for name in a}
    return (loss_value, (logits, new_batch_stats)), grads, stats

  return capture


def settings(opt_config: ml_collections.ConfigDict) -> dict:
  """The capture's keys of ``opt_config`` (``CONFIG_KEYS``), unset placeholders as defaults.

  Raises:
    ConfigError: ``config.optimizer.fisher`` is not one of ``FISHER_TYPES``.
  """
  out = {}
  for key, default in CONFIG_KEYS.items():
    value = opt_config.get(key)
    out[key] = default if value is None else value
  check_choice("config.optimizer.fisher", out["fisher"], FISHER_TYPES)
  return out


def factor_update_period(opt_config: ml_collections.ConfigDict) -> int:
  """τ: the train step captures statistics on the steps ``step % τ == 0`` only.

  ``config.optimizer.factor_update_period`` for an optimizer that needs statistics (the K-FAC
  factory's argument, ``lbjax.optim.kfac.scale_by_kfac``, which checks it; unset: 1, every
  step); 1 for any other optimizer, whose every step is the one program without a capture.
  """
  if opt_config.name not in OPTIMIZERS_WITH_STATISTICS:
    return 1
  value = opt_config.get("factor_update_period")
  return 1 if value is None else int(value)


def from_config(opt_config: ml_collections.ConfigDict, model: nn.Module, loss: Callable
                ) -> Callable | None:
  """:func:`make_capture` for an optimizer that needs statistics (``kfac``), else None.

  The capture's settings come from the optimizer's config block (``config.optimizer.fisher``).
  """
  if opt_config.name not in OPTIMIZERS_WITH_STATISTICS:
    return None
  return make_capture(model, loss, **settings(opt_config))
