"""K-FAC (lbjax/optim/kfac.py, kfac_capture.py) against an independent NumPy reference.

The reference re-derives everything in float64 from the formulas: the forward pass, the backward
pass to every pre-activation by hand (im2col / col2im loops for convolutions), the factors
``A = mean ā āᵀ`` and ``G = B Σ (dL/ds)(dL/ds)ᵀ``, their bias-corrected moving averages, the π-split
damping, ``np.linalg.inv`` and ``A⁻¹ [∇W; ∇b] G⁻¹``. The JAX side runs the real capture (flax
interceptor, one forward/backward pass) and :func:`lbjax.optim.kfac.scale_by_kfac`.
"""

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lbjax.errors import ConfigError
from lbjax.optim import kfac_capture
from lbjax.optim import registry
from lbjax.optim.kfac import kfac
from lbjax.optim.kfac import scale_by_kfac

RTOL = ATOL = 1e-5


# --------------------------------------------------------------------------- models


class DenseNet(nn.Module):
  @nn.compact
  def __call__(self, x, train=True):
    del train
    x = nn.relu(nn.Dense(5, name="fc1")(x))
    x = nn.relu(nn.Dense(4, use_bias=False, name="fc2")(x))
    return nn.Dense(3, name="out")(x)


class ConvNet(nn.Module):
  @nn.compact
  def __call__(self, x, train=True):
    del train
    x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME", name="conv1")(x))
    x = nn.relu(nn.Conv(3, (2, 2), padding="VALID", use_bias=False, name="conv2")(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(3, name="out")(x)


def cross_entropy(logits, targets):
  return optax.softmax_cross_entropy(logits, targets).mean()


# --------------------------------------------------------------------------- NumPy reference


def np_patches(x, k, stride, pads):
  """im2col by explicit loops: [B, oh, ow, kh*kw*c], patch order (kh, kw, c)."""
  x = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
  b, h, w, c = x.shape
  oh, ow = (h - k[0]) // stride + 1, (w - k[1]) // stride + 1
  out = np.zeros((b, oh, ow, k[0] * k[1] * c))
  for i in range(oh):
    for j in range(ow):
      window = x[:, i * stride:i * stride + k[0], j * stride:j * stride + k[1], :]
      out[:, i, j] = window.reshape(b, -1)
  return out


def np_col2im(dp, x_shape, k, stride, pads):
  """Adjoint of np_patches: scatter-add patch gradients back to the (unpadded) input."""
  b, h, w, c = x_shape
  dx = np.zeros((b, h + sum(pads[0]), w + sum(pads[1]), c))
  for i in range(dp.shape[1]):
    for j in range(dp.shape[2]):
      dx[:, i * stride:i * stride + k[0], j * stride:j * stride + k[1], :] += dp[:, i, j].reshape(
          b, k[0], k[1], c)
  return dx[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w]


def same_pads(n, k, s):
  out = -(-n // s)
  total = max((out - 1) * s + k - n, 0)
  return (total // 2, total - total // 2)


def with_one(a):
  return np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)


def np_dense_stats(params, x, y):
  """Per-layer (input rows [N, d_in], dL/ds rows [N, d_out], grads) of DenseNet."""
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
  h1 = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  r1 = np.maximum(h1, 0)
  h2 = r1 @ p["fc2"]["kernel"]
  r2 = np.maximum(h2, 0)
  z = r2 @ p["out"]["kernel"] + p["out"]["bias"]
  prob = np.exp(z - z.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  dz = (prob - y) / len(x)
  dh2 = dz @ p["out"]["kernel"].T * (h2 > 0)
  dh1 = dh2 @ p["fc2"]["kernel"].T * (h1 > 0)
  return {"fc1": (x, dh1, True), "fc2": (r1, dh2, False), "out": (r2, dz, True)}


def np_conv_stats(params, x, y):
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
  b = len(x)
  pads1 = [same_pads(x.shape[1], 3, 2), same_pads(x.shape[2], 3, 2)]
  P1 = np_patches(x, (3, 3), 2, pads1)
  h1 = P1 @ p["conv1"]["kernel"].reshape(-1, 4) + p["conv1"]["bias"]
  r1 = np.maximum(h1, 0)
  P2 = np_patches(r1, (2, 2), 1, [(0, 0), (0, 0)])
  h2 = P2 @ p["conv2"]["kernel"].reshape(-1, 3)
  r2 = np.maximum(h2, 0)
  f = r2.reshape(b, -1)
  z = f @ p["out"]["kernel"] + p["out"]["bias"]
  prob = np.exp(z - z.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  dz = (prob - y) / b
  dh2 = (dz @ p["out"]["kernel"].T).reshape(h2.shape) * (h2 > 0)
  dP2 = dh2 @ p["conv2"]["kernel"].reshape(-1, 3).T
  dh1 = np_col2im(dP2, r1.shape, (2, 2), 1, [(0, 0), (0, 0)]) * (h1 > 0)
  flat = lambda a: a.reshape(-1, a.shape[-1])
  return {"conv1": (flat(P1), flat(dh1), True), "conv2": (flat(P2), flat(dh2), False),
          "out": (f, dz, True)}


def np_factors(stats, batch):
  out = {}
  for name, (a, ds, bias) in stats.items():
    a = with_one(a) if bias else a
    out[name] = (a.T @ a / len(a), batch * ds.T @ ds)
  return out


def np_grads(stats, layer):
  """[∇W; ∇b] of a layer from its inputs and dL/ds: Σ_rows āᵀ ds."""
  a, ds, bias = stats[layer]
  a = with_one(a) if bias else a
  return a.T @ ds


def np_inverses(a, g, damping):
  pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(g) / len(g)))
  gamma = np.sqrt(damping)
  return (np.linalg.inv(a + pi * gamma * np.eye(len(a))),
          np.linalg.inv(g + gamma / pi * np.eye(len(g))))


def np_kfac(stats_per_step, decay, damping, period):
  """Preconditioned [∇W; ∇b] blocks of every step, following the module docstring."""
  sums, inverses, results = {}, {}, []
  for k, (stats, batch) in enumerate(stats_per_step, start=1):
    factors = np_factors(stats, batch)
    for name, (a, g) in factors.items():
      sa, sg = sums.get(name, (0.0, 0.0))
      sums[name] = (decay * sa + (1 - decay) * a, decay * sg + (1 - decay) * g)
    if (k - 1) % period == 0:
      corr = 1 - decay ** k
      inverses = {n: np_inverses(sa / corr, sg / corr, damping) for n, (sa, sg) in sums.items()}
    results.append({n: inverses[n][0] @ np_grads(stats, n) @ inverses[n][1] for n in stats})
  return results


# --------------------------------------------------------------------------- JAX side


def jax_kfac(model, params, batches, decay, damping, period):
  capture = jax.jit(kfac_capture.make_capture(model, cross_entropy))
  tx = scale_by_kfac(decay, damping, period)
  state = tx.init(params)
  update = jax.jit(lambda g, s, stats: tx.update(g, s, kfac_stats=stats))
  results = []
  for x, y in batches:
    keys = jax.random.split(jax.random.PRNGKey(0), len(x))
    _, grads, stats = capture(params, {}, jnp.asarray(x, jnp.float32),
                              jnp.asarray(y, jnp.float32), keys)
    updates, state = update(grads, state, stats)
    results.append(jax.device_get(updates))
  return results


def as_block(layer_updates):
  kernel = np.asarray(layer_updates["kernel"], np.float64)
  block = kernel.reshape(-1, kernel.shape[-1])
  if "bias" in layer_updates:
    block = np.concatenate([block, np.asarray(layer_updates["bias"], np.float64)[None]])
  return block


def make_batches(rng, shape, num_classes, steps):
  return [(rng.standard_normal(shape), np.eye(num_classes)[rng.integers(0, num_classes, shape[0])])
          for _ in range(steps)]


@pytest.mark.parametrize("period", [1, 2])
@pytest.mark.parametrize("net", ["dense", "conv"])
def test_preconditioned_update_matches_numpy_reference(net, period):
  rng = np.random.default_rng(0)
  if net == "dense":
    model, shape, np_stats = DenseNet(), (8, 4), np_dense_stats
  else:
    model, shape, np_stats = ConvNet(), (4, 6, 6, 2), np_conv_stats
  batches = make_batches(rng, shape, 3, steps=3)
  params = model.init(jax.random.PRNGKey(1), jnp.zeros(shape), train=False)["params"]
  decay, damping = 0.5, 0.05
  got = jax_kfac(model, params, batches, decay, damping, period)
  want = np_kfac([(np_stats(params, x, y), shape[0]) for x, y in batches], decay, damping, period)
  for step, (g, w) in enumerate(zip(got, want)):
    assert set(g) == set(w)
    for layer in w:
      np.testing.assert_allclose(as_block(g[layer]), w[layer], rtol=RTOL, atol=ATOL,
                                 err_msg=f"{net} step {step} layer {layer}")


def test_sampled_fisher_averages_to_the_true_fisher():
  """With labels drawn from softmax(logits), E[G] of the output layer = mean_n diag(p) − p pᵀ."""
  model, shape = DenseNet(), (16, 4)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  y = jax.nn.one_hot(jnp.arange(shape[0]) % 3, 3)
  params = model.init(jax.random.PRNGKey(1), x, train=False)["params"]
  params = jax.tree.map(lambda p: 3 * p, params)  # a confident, non-uniform predictive distribution
  capture = kfac_capture.make_capture(model, cross_entropy, fisher="sampled")

  def output_g(seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), shape[0])
    return capture(params, {}, x, y, keys)[2]["out"]["g"]

  g = np.mean(jax.jit(jax.vmap(output_g))(jnp.arange(400)), axis=0)
  p = np.asarray(jax.nn.softmax(model.apply({"params": params}, x)), np.float64)
  want = np.mean([np.diag(q) - np.outer(q, q) for q in p], axis=0)
  np.testing.assert_allclose(g, want, atol=0.01)
  # The empirical Fisher of the same batch is a different matrix.
  empirical = kfac_capture.make_capture(model, cross_entropy)(params, {}, x, y, None)[2]
  assert np.abs(np.asarray(empirical["out"]["g"]) - want).max() > 0.05


def test_without_statistics_it_is_momentum_sgd():
  """Statistics of no layer (``kfac_stats={}``): identity preconditioner, then seed 002 eqs.
  (1)-(2) with weight decay. No ``kfac_stats`` at all is refused (statistics every step)."""
  params = {"fc": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))},
            "bn": {"scale": jnp.ones((2,))}}
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  tx = kfac(0.1, momentum=0.9, weight_decay=0.01, mask=lambda t: jax.tree.map(
      lambda p: p.ndim > 1, t))
  state = tx.init(params)
  with pytest.raises(ValueError, match="needs kfac_stats on every update"):
    tx.update(grads, state, params)
  u1, state = tx.update(grads, state, params, kfac_stats={})
  u2, state = tx.update(grads, state, params, kfac_stats={})
  m1 = -0.1 * (0.5 + 0.01)  # kernel: decayed
  np.testing.assert_allclose(u1["fc"]["kernel"], m1, rtol=1e-6)
  np.testing.assert_allclose(u2["fc"]["kernel"], 0.9 * m1 + m1, rtol=1e-6)
  np.testing.assert_allclose(u2["bn"]["scale"], 0.9 * -0.05 - 0.05, rtol=1e-6)


def test_unsupported_layers_are_left_to_sgd_and_shared_layers_refused():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=True):
      x = nn.Conv(2, (3, 3), kernel_dilation=2, name="dilated")(x)
      return nn.Dense(3, name="out")(x.reshape((x.shape[0], -1)))

  class Shared(nn.Module):
    @nn.compact
    def __call__(self, x, train=True):
      dense = nn.Dense(4, name="shared")
      return dense(dense(x))

  x = jnp.ones((2, 6, 6, 1))
  params = Net().init(jax.random.PRNGKey(0), x)["params"]
  _, _, stats = kfac_capture.make_capture(Net(), cross_entropy)(params, {}, x, jnp.ones((2, 3)) / 3,
                                                                None)
  assert set(stats) == {"out"}
  x = jnp.ones((2, 4))
  params = Shared().init(jax.random.PRNGKey(0), x)["params"]
  with pytest.raises(ValueError, match="more than once"):
    kfac_capture.make_capture(Shared(), cross_entropy)(params, {}, x, jnp.ones((2, 4)) / 4, None)


@pytest.mark.parametrize("kwargs,argument", [
    ({"damping": 0.0}, "damping"),
    ({"inverse_update_period": 0}, "inverse_update_period"),
    ({"inverse_update_period": True}, "inverse_update_period"),
    ({"cov_ema_decay": 1.0}, "cov_ema_decay"),
    ({"momentum": -0.1}, "momentum"),
])
def test_bad_arguments_raise_value_error_and_the_registry_names_the_config_key(kwargs, argument):
  with pytest.raises(ValueError) as e:
    kfac(0.1, **kwargs)
  assert e.value.argument == argument
  block = registry.config_block("kfac", learning_rate=0.1, **kwargs)
  with pytest.raises(ConfigError) as e:
    registry.validate(block)
  assert e.value.key == f"config.optimizer.{argument}"


def test_fisher_is_the_captures_setting_not_the_optimizers():
  assert "fisher" not in inspect.signature(kfac).parameters
  assert "fisher" in registry.hyperparameters("kfac")
  with pytest.raises(ValueError, match="fisher"):
    kfac_capture.make_capture(DenseNet(), cross_entropy, fisher="exact")
  with pytest.raises(ConfigError) as e:
    registry.validate(registry.config_block("kfac", learning_rate=0.1, fisher="exact"))
  assert e.value.key == "config.optimizer.fisher"
  with pytest.raises(ConfigError) as e:  # a capture key on an optimizer without statistics
    registry.validate(registry.config_block("sgd", learning_rate=0.1, fisher="sampled"))
  assert e.value.key == "config.optimizer.fisher"
  block = registry.config_block("kfac", learning_rate=0.1)
  assert kfac_capture.settings(block) == {"fisher": "empirical"}
  block.fisher = "sampled"
  assert kfac_capture.settings(block) == {"fisher": "sampled"}
  registry.build(block, 0.1)  # the registry keeps `fisher` away from the factory
