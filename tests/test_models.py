"""Tests of lbjax.models: parameter counts, the model interface, BatchNorm / Ghost BN numerics."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from lbjax import mesh as mesh_lib
from lbjax import models
from lbjax.errors import ConfigError
from lbjax.models import layers

EPS = 1e-5
MOMENTUM = 0.9


def _num_params(name, shape, num_classes=10):
  """Parameter count from shapes only (``jax.eval_shape``: nothing big is computed)."""
  model = models.create(name, num_classes)
  init = functools.partial(model.init, train=False)
  variables = jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name, expected", [
    ("lenet5", 62_006),
    ("vgg9", 2_789_706),
    ("resnet18", 11_173_962),
    ("resnet34", 21_282_122),
    ("resnet56", 853_018),
])
def test_parameter_counts_cifar10(name, expected):
  assert _num_params(name, (1, 32, 32, 3)) == expected


def test_resnet56_is_he_et_al_size():
  assert 840_000 <= _num_params("resnet56", (1, 32, 32, 3)) <= 870_000


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _init(model, x, seed=0):
  """Variables of ``model`` for ``x``: shapes from ``jax.eval_shape``, values from NumPy.

  He-scaled normal kernels, zero biases, BN at its initial state. Cheaper than running
  ``model.init``, whose random ops are slow to compile on CPU (see ``test_init``).
  """
  init = functools.partial(model.init, train=False)
  shapes = jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct(x.shape, x.dtype))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("bias", "mean"):
      return jnp.zeros(leaf.shape, leaf.dtype)
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape, leaf.dtype)
    std = np.sqrt(2 / np.prod(leaf.shape[:-1]))
    return jnp.asarray(rng.normal(scale=std, size=leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


# Compiling a whole model with XLA's CPU backend optimisations off costs a fraction of the default
# (or of op-by-op execution); these tests check values, not speed.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compile_forward(model, variables, x):
  """``model``'s train and eval forward as ``train.py`` runs it: per device, under a mapped axis
  ``"batch"`` (of size 1 here, so the statistics are the batch's).

  Returns:
    ``forward(variables, x) -> (train logits, batch_stats updates, eval logits)`` and the number
    of cross-device means (``psum``) in its program.
  """
  def forward(v, xs):
    def per_device(xs):
      logits, updates = model.apply(v, xs, train=True, mutable=["batch_stats"])
      return logits, updates, model.apply(v, xs, train=False)
    return jax.tree.map(lambda a: a[0], jax.vmap(per_device, axis_name="batch")(xs[None]))

  traced = jax.jit(forward).trace(variables, x)
  compiled = traced.lower().compile(compiler_options=FAST_COMPILE)
  return compiled, str(traced.jaxpr).count("psum")


def _num_norm_layers(variables):
  return len(jax.tree.leaves(variables.get("batch_stats", {}))) // 2  # mean and var each


@pytest.mark.parametrize("name, shape", [(n, (4, 8, 8, 1)) for n in models.MODELS] +
                         [(n, (4, 32, 32, 3)) for n in ("lenet5", "resnet_tiny")])
def test_forward_train_and_eval(name, shape):
  num_classes = 7
  model = models.create(name, num_classes, axis_name="batch")
  x = _images(shape)
  variables = _init(model, x)
  forward, psums = _compile_forward(model, variables, x)
  # Every BN layer averages its statistics over the axis, with one stacked pmean.
  assert psums == _num_norm_layers(variables)
  assert psums > 0 or name == "lenet5"

  logits_train, updates, logits_eval = forward(variables, x)
  for logits in (logits_train, logits_eval):
    assert logits.shape == (4, num_classes)
    assert logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))

  # Example 0 with other batch-mates.
  logits_other, _, logits_eval_other = forward(
      variables, x.at[1:].set(_images((3,) + shape[1:], seed=1)))
  # Eval normalises with running statistics: an example's logits do not depend on its batch.
  chex.assert_trees_all_close(logits_eval_other[0], logits_eval[0], atol=1e-5)
  if psums:
    # Training normalises with batch statistics and moves the running averages.
    assert not np.allclose(logits_other[0], logits_train[0], atol=1e-4)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"],
                           updates["batch_stats"])
    assert all(jax.tree.leaves(changed))
  else:
    chex.assert_trees_all_close(logits_train, logits_eval)


def test_init():
  """The real ``model.init``: seeded, float32 parameters and statistics whatever the dtype."""
  model = models.create("resnet_tiny", 7, dtype=jnp.bfloat16)
  init = jax.jit(lambda key: model.init(key, jnp.zeros((4, 8, 8, 1)), train=False)).lower(
      jax.random.key(0)).compile(compiler_options=FAST_COMPILE)
  variables, again, other = init(jax.random.key(0)), init(jax.random.key(0)), init(
      jax.random.key(1))
  chex.assert_trees_all_equal(variables, again)
  kernel = variables["params"]["stem_conv"]["kernel"]
  assert not np.allclose(kernel, other["params"]["stem_conv"]["kernel"])
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / (9 * 8)), rtol=0.3)  # He, fan-out
  stats = variables["batch_stats"]["stem_bn"]
  np.testing.assert_array_equal(stats["mean"], 0)
  np.testing.assert_array_equal(stats["var"], 1)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_compute_dtype_bfloat16_keeps_float32_state():
  model = models.create("resnet_tiny", 7, dtype=jnp.bfloat16, ghost_batch_size=2)
  x = _images((4, 8, 8, 1))
  variables = _init(model, x)  # carries the dtypes model.init gives (from jax.eval_shape)
  logits, updates, logits_eval = _compile_forward(model, variables, x)[0](variables, x)
  assert logits.dtype == logits_eval.dtype == jnp.float32  # cast up for the loss (issue 17)
  assert bool(jnp.all(jnp.isfinite(logits)))
  for leaf in jax.tree.leaves((variables, updates)):
    assert leaf.dtype == jnp.float32


def test_create_unknown_name():
  with pytest.raises(ConfigError, match=r"config\.model\.name.*resnet18") as e:
    models.create("resnet9000", 10)
  assert e.value.key == "config.model.name"


def test_create_unknown_field():
  with pytest.raises(ConfigError, match=r"config\.model\.depth.*ghost_batch_size") as e:
    models.create("resnet18", 10, depth=18)
  assert e.value.key == "config.model.depth"
  assert "stage_sizes" in str(e.value)


@pytest.mark.parametrize("bad", [0, -4, 2.5])
def test_create_bad_ghost_batch_size(bad):
  with pytest.raises(ConfigError, match=r"config\.model\.ghost_batch_size"):
    models.create("resnet_tiny", 10, ghost_batch_size=bad)


def test_every_model_accepts_the_common_fields():
  for name in models.MODELS:
    assert {"dtype", "axis_name", "ghost_batch_size"} <= set(models.fields(name))


# --- Normalisation numerics ---------------------------------------------------------------------


def _random_affine(variables, seed=5):
  """Replaces scale/bias by random values, so the affine part of BN is exercised too."""
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda p: p + rng.normal(size=p.shape).astype(np.float32),
                        variables["params"])
  return {**variables, "params": params}


def _apply_norm(layer, variables, x):
  return layer.apply(variables, x, mutable=["batch_stats"])


def _reference_ghost_bn(x, g, scale, bias):
  """Independent NumPy Ghost BN in float64: output and the running-average update from (0, 1)."""
  x = np.asarray(x, np.float64)
  ghosts = x.reshape((x.shape[0] // g, g) + x.shape[1:])
  axes = tuple(range(1, ghosts.ndim - 1))
  mu = ghosts.mean(axis=axes, keepdims=True)
  var = ((ghosts - mu) ** 2).mean(axis=axes, keepdims=True)
  y = (ghosts - mu) / np.sqrt(var + EPS) * scale + bias
  c = x.shape[-1]
  ra_mean = (1 - MOMENTUM) * mu.reshape(-1, c).mean(0)
  ra_var = MOMENTUM + (1 - MOMENTUM) * var.reshape(-1, c).mean(0)
  return y.reshape(x.shape), ra_mean, ra_var


@pytest.mark.parametrize("shape, ghost", [((8, 3, 3, 5), 8), ((8, 5), 16)])
def test_ghost_bn_with_whole_batch_equals_flax_batchnorm(shape, ghost):
  x = _images(shape) * 3 + 1
  ghost_layer = layers.norm(True, ghost_batch_size=ghost)
  flax_layer = nn.BatchNorm(use_running_average=False, momentum=MOMENTUM, epsilon=EPS)
  variables = _random_affine(flax_layer.init(jax.random.key(0), x))
  assert jax.tree.structure(ghost_layer.init(jax.random.key(0), x)) == jax.tree.structure(variables)
  chex.assert_trees_all_close(_apply_norm(ghost_layer, variables, x),
                              _apply_norm(flax_layer, variables, x), atol=1e-6)


@pytest.mark.parametrize("shape, ghost", [((8, 3, 3, 5), 1), ((8, 3, 3, 5), 4), ((8, 5), 2)])
def test_ghost_bn_matches_numpy(shape, ghost):
  x = _images(shape) * 3 + 1
  layer = layers.norm(True, ghost_batch_size=ghost)
  variables = _random_affine(layer.init(jax.random.key(0), x))
  scale, bias = (np.asarray(variables["params"][k]) for k in ("scale", "bias"))
  y, updates = _apply_norm(layer, variables, x)
  y_ref, mean_ref, var_ref = _reference_ghost_bn(x, ghost, scale, bias)
  np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], mean_ref, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["var"], var_ref, atol=1e-5, rtol=1e-5)

  # Evaluation: the running statistics, not the batch's.
  eval_vars = {**variables, **updates}
  y_eval = layers.norm(False, ghost_batch_size=ghost).apply(eval_vars, x)
  y_eval_ref = (np.asarray(x) - mean_ref) / np.sqrt(var_ref + EPS) * scale + bias
  np.testing.assert_allclose(y_eval, y_eval_ref, atol=1e-5, rtol=1e-5)


def test_ghost_bn_indivisible_batch_names_the_key():
  x = _images((6, 2, 2, 3))
  layer = layers.norm(True, ghost_batch_size=4)
  variables = layer.init(jax.random.key(0), x[:4])
  with pytest.raises(ValueError, match=r"config\.model\.ghost_batch_size"):
    _apply_norm(layer, variables, x)
  # Evaluation batches need not be divisible.
  assert layers.norm(False, ghost_batch_size=4).apply(variables, x).shape == x.shape


def test_ghost_bn_in_model_normalises_each_ghost_batch_alone():
  x = _images((4, 8, 8, 1))
  x_other = x.at[2:].set(_images((2, 8, 8, 1), seed=1))  # the second ghost batch changes
  for ghost_batch_size, independent in ((2, True), (None, False)):
    model = models.create("resnet_tiny", 7, axis_name="batch", ghost_batch_size=ghost_batch_size)
    variables = _init(model, x)
    forward, psums = _compile_forward(model, variables, x)
    assert psums == _num_norm_layers(variables)  # Ghost BN pmeans its running averages
    logits, logits_other = forward(variables, x)[0], forward(variables, x_other)[0]
    # Training logits of ghost batch {0, 1} do not depend on examples {2, 3}; with BN they do.
    assert np.allclose(logits[:2], logits_other[:2], atol=1e-5) == independent


# --- Cross-device statistics, data-parallel over a mesh -----------------------------------------

DEVICES = 4


def _data_parallel(fn, variables, x):
  """``fn(variables, shard)`` as a data-parallel program (`lbjax.mesh.data_parallel`) over axis
  "batch" of a mesh of ``DEVICES`` devices, each with its equal shard of ``x``: the outputs
  concatenated over the devices, and every device's own running statistics ``[DEVICES, ...]``."""
  assert jax.local_device_count() >= DEVICES, "tests/conftest.py must force 4 host devices"
  mesh = mesh_lib.data_mesh(jax.local_devices()[:DEVICES])
  rows = P(mesh_lib.AXIS)

  def per_device(v, xs):
    y, stats = fn(v, xs)
    return y, jax.tree.map(lambda s: s[None], stats)  # each device's copy, not only the first

  program = mesh_lib.data_parallel(per_device, mesh, in_specs=(P(), rows), out_specs=(rows, rows))
  return program(mesh_lib.put_replicated(variables, mesh),
                 mesh_lib.put_sharded(np.asarray(x), mesh, mesh_lib.AXIS))


def _check_data_parallel(parallel, single, atol):
  (y_dev, stats_dev), (y, stats) = parallel, single
  assert y_dev.shape == y.shape
  np.testing.assert_allclose(np.asarray(y_dev), y, atol=atol, rtol=atol)
  for r in range(DEVICES):  # replicas hold identical running statistics equal to the 1-device ones
    chex.assert_trees_all_close(jax.tree.map(lambda s, r=r: s[r], stats_dev), stats, atol=atol)


@pytest.mark.parametrize("ghost", [None, 2])
def test_norm_data_parallel_equals_one_device(ghost):
  """axis_name + no ghost: global-batch BN. Ghost: local ghost batches, pmean-ed running stats;
  ghost batches never cross a device, so both equal one device on the concatenated batch."""
  x = _images((16, 3, 3, 5)) * 2 + jnp.arange(16.)[:, None, None, None]  # devices differ
  variables = _random_affine(layers.norm(True).init(jax.random.key(0), x))

  def apply(axis_name, v, xs):
    return layers.norm(True, axis_name, ghost).apply(v, xs, mutable=["batch_stats"])

  parallel = _data_parallel(functools.partial(apply, "batch"), variables, x)
  # The shards have different means, so per-device statistics would not match.
  _check_data_parallel(parallel, apply(None, variables, x), atol=1e-5)


def test_model_axis_name_data_parallel_equals_one_device():
  """Model level (that every model's BN layers get ``axis_name`` is checked by the psum count)."""
  x = _images((4, 8, 8, 1))  # one example per device: local statistics would differ a lot
  model = models.create("resnet_tiny", 7, axis_name="batch")
  single = models.create("resnet_tiny", 7)
  variables = _init(single, x)
  parallel = _data_parallel(lambda v, xs: model.apply(v, xs, train=True, mutable=["batch_stats"]),
                            variables, x)
  _check_data_parallel(parallel, single.apply(variables, x, train=True, mutable=["batch_stats"]),
                       atol=1e-4)
