"""lbjax.analysis.noise_scale: McCandlish et al. (2018) App. A.1 against a problem whose
per-example gradient covariance is known exactly (linear regression with Gaussian inputs).

`GaussianRegression` is the reference problem for the training-time test too (through the train
step, data-parallel and with micro-batches): ``problem.exact_b_simple`` is tr(Σ)/|G|² at
``problem.w``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lbjax.analysis import noise_scale


class GaussianRegression(NamedTuple):
  r"""Per-example loss ½(xᵀw − y)², x ~ N(0, I_D), y = xᵀw* + σξ, ξ ~ N(0, 1), at weights w.

  With d = w − w*, the per-example gradient is g = x(xᵀd − σξ); its mean is G = d and (Isserlis)
  E[g gᵀ] = |d|² I + 2 d dᵀ + σ² I, so Σ = (|d|² + σ²) I + d dᵀ and
  tr Σ / |G|² = (D(|d|² + σ²) + |d|²) / |d|².
  """
  w: np.ndarray
  w_star: np.ndarray
  noise_std: float

  @classmethod
  def make(cls, dim: int = 8, noise_std: float = 1.0, distance: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    w_star = rng.standard_normal(dim)
    d = rng.standard_normal(dim)
    return cls(w_star + distance * d / np.linalg.norm(d), w_star, noise_std)

  @property
  def exact_grad_sq(self) -> float:
    return float(np.sum((self.w - self.w_star) ** 2))

  @property
  def exact_trace_sigma(self) -> float:
    return self.w.size * (self.exact_grad_sq + self.noise_std**2) + self.exact_grad_sq

  @property
  def exact_b_simple(self) -> float:
    return self.exact_trace_sigma / self.exact_grad_sq

  def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``{"x": [*shape, D], "y": [*shape]}``."""
    x = rng.standard_normal((*shape, self.w.size))
    return {"x": x, "y": x @ self.w_star + self.noise_std * rng.standard_normal(shape)}

  def per_example_grads(self, batch) -> np.ndarray:
    return batch["x"] * (batch["x"] @ self.w - batch["y"])[..., None]


def test_estimators_recover_g_and_trace_from_their_expectations():
  g_sq, trace, b_small, b_big = 2.5, 40.0, 16, 64
  sq_small, sq_big = g_sq + trace / b_small, g_sq + trace / b_big  # E|G_B|² = |G|² + tr Σ / B
  got = noise_scale.simple_noise_scale(sq_small, sq_big, b_small, b_big)
  np.testing.assert_allclose(got, (g_sq, trace, trace / g_sq), rtol=1e-12)
  # Elementwise on arrays, and inside jit (batch sizes static).
  jitted = jax.jit(lambda s, b: noise_scale.simple_noise_scale(s, b, b_small, b_big))
  out = jitted(jnp.array([sq_small, 3.0]), jnp.array([sq_big, 2.0]))
  np.testing.assert_allclose(np.asarray(out[0]), [g_sq, (64 * 2 - 16 * 3) / 48], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out[1]), [trace, 1.0 / (1 / 16 - 1 / 64)], rtol=1e-6)
  for bad in ((64, 64), (65, 64), (0, 64)):
    with pytest.raises(ValueError, match="b_small < b_big"):
      noise_scale.simple_noise_scale(1.0, 0.5, *bad)


def _estimates(problem, rng, steps, pieces, piece_size):
  """Per-step ``(g_sq, trace_sigma)`` from ``pieces`` small batches of ``piece_size`` each
  (devices × micro-batches) and their union, per-example gradients computed directly."""
  grads = problem.per_example_grads(problem.sample(rng, (steps, pieces, piece_size)))
  small = grads.mean(axis=2)                             # [steps, pieces, D]
  sq_small = np.mean(np.sum(small**2, -1), axis=1)
  sq_big = np.sum(small.mean(axis=1) ** 2, -1)            # the global batch's mean gradient
  g_sq, trace, _ = noise_scale.simple_noise_scale(sq_small, sq_big, piece_size,
                                                  pieces * piece_size)
  return g_sq, trace


@pytest.mark.parametrize("pieces,piece_size", [(4, 16), (2, 32), (8, 4)])
def test_b_simple_averaged_over_steps_is_within_ten_percent_of_the_exact_one(pieces, piece_size):
  """4 devices × 16, one device's 64 split in halves, 2 devices × 4 micro-batches of 4."""
  problem = GaussianRegression.make(dim=8, noise_std=1.0, seed=0)
  assert problem.exact_b_simple == pytest.approx(17.0)
  g_sq, trace = _estimates(problem, np.random.default_rng(1), 600, pieces, piece_size)
  assert np.mean(g_sq) == pytest.approx(problem.exact_grad_sq, rel=0.1)
  assert np.mean(trace) == pytest.approx(problem.exact_trace_sigma, rel=0.1)
  assert np.mean(trace) / np.mean(g_sq) == pytest.approx(problem.exact_b_simple, rel=0.1)
  # One step's ratio is far noisier (often negative): why the averages come before the ratio.
  assert np.std(trace / g_sq) > 0.5 * problem.exact_b_simple


def test_ema_across_windows_matches_its_recursion_and_tracks_the_exact_value():
  problem = GaussianRegression.make(dim=8, noise_std=1.0, distance=2.0, seed=3)
  ema = noise_scale.NoiseScaleEMA()
  assert np.isnan(ema.b_simple) and np.isnan(ema.values()["grad_sq"])
  decay, window = 0.8, 20
  windows, sq_pairs = [], []
  for start in range(0, 800, window):  # the loop: window means of the two logged metrics
    grads = problem.per_example_grads(problem.sample(np.random.default_rng(start), (window, 4,
                                                                                     16)))
    small = grads.mean(axis=2)
    sq_small = float(np.mean(np.sum(small**2, -1)))
    sq_big = float(np.mean(np.sum(small.mean(axis=1) ** 2, -1)))
    windows.append(noise_scale.simple_noise_scale(sq_small, sq_big, 16, 64)[:2])
    sq_pairs.append((sq_small, sq_big))
    ema = ema.update(sq_small, sq_big, 16, 64, decay=decay)
  windows = np.asarray(windows)
  t = len(windows)
  weights = (1 - decay) * decay ** np.arange(t - 1, -1, -1)
  ref_g, ref_s = weights @ windows[:, 0], weights @ windows[:, 1]
  values = ema.values()
  assert ema.weight == pytest.approx(1 - decay**t)
  assert values["grad_sq"] == pytest.approx(ref_g / (1 - decay**t), rel=1e-9)
  assert values["trace_sigma"] == pytest.approx(ref_s / (1 - decay**t), rel=1e-9)
  assert values["noise_scale"] == ema.b_simple == pytest.approx(ref_s / ref_g, rel=1e-9)
  assert ema.b_simple == pytest.approx(problem.exact_b_simple, rel=0.1)
  # Replaying metrics.jsonl's window records (as a resumed run would) gives the same averages.
  records = [{"step": 1, "test_accuracy": 0.5}] + [
      {"step": 20 * (i + 1), "train_grad_sq_small": s, "train_grad_sq_big": b}
      for i, (s, b) in enumerate(sq_pairs)]
  assert noise_scale.NoiseScaleEMA.replay(records, 16, 64, decay=decay) == ema
  with pytest.raises(ValueError, match="decay"):
    ema.update(1.0, 0.5, 16, 64, decay=1.0)


def test_batch_sizes_follow_the_issue_rule():
  assert noise_scale.batch_sizes(256, 4) == (64, 256, 1)         # per-device batch
  assert noise_scale.batch_sizes(256, 4, 16) == (16, 256, 4)     # micro-batches
  assert noise_scale.batch_sizes(256, 4, 64) == (64, 256, 1)     # micro = device batch
  assert noise_scale.batch_sizes(128, 1) == (64, 128, 2)         # one device: two halves
  assert noise_scale.batch_sizes(128, 1, 32) == (32, 128, 4)
  for args in ((129, 1), (1, 1), (100, 3), (256, 4, 24)):
    with pytest.raises(ValueError):
      noise_scale.batch_sizes(*args)


def test_squared_norm_of_a_gradient_tree():
  tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": [jnp.ones(4, jnp.bfloat16)]}
  assert float(noise_scale.squared_norm(tree)) == pytest.approx(55.0 + 4.0)


def test_window_b_simple_averages_the_window_estimates_then_takes_the_ratio():
  rng = np.random.default_rng(3)
  steps = [5, 10, 20, 25, 40]  # uneven windows: 5, 5, 10, 5, 15 steps
  g = rng.uniform(0.5, 2.0, len(steps))
  s = rng.uniform(10.0, 90.0, len(steps))
  records = [{"step": t, "train_noise_g_sq": float(a), "train_noise_trace_sigma": float(b)}
             for t, a, b in zip(steps, g, s)]
  records.insert(2, {"step": 20, "validation_accuracy": 0.5})  # not a training window
  lengths = np.diff([0] + steps)
  inside = np.array([10 < t <= 40 for t in steps])  # windows ending in (10, 40]
  expected = (np.sum(lengths[inside] * s[inside]) / np.sum(lengths[inside] * g[inside]))
  assert noise_scale.window_b_simple(records[::-1], 10, 40) == pytest.approx(expected, rel=1e-12)
  # The second half of the logged training: (20, 40].
  inside = np.array([20 < t <= 40 for t in steps])
  expected = (np.sum(lengths[inside] * s[inside]) / np.sum(lengths[inside] * g[inside]))
  assert noise_scale.second_half_b_simple(records) == pytest.approx(expected, rel=1e-12)
  assert noise_scale.window_b_simple(records, 40, 100) is None
  assert noise_scale.second_half_b_simple([{"step": 3, "train_loss": 1.0}]) is None
  negative = [dict(r, train_noise_g_sq=-1.0) for r in records if "train_noise_g_sq" in r]
  assert np.isnan(noise_scale.window_b_simple(negative, 0, 40))
  # Records of the raw window means only: the estimates from the two batch sizes, or skipped.
  raw = [{"step": 10, "train_grad_sq_small": 9.0, "train_grad_sq_big": 5.0},
         {"step": 20, "train_grad_sq_small": 7.0, "train_grad_sq_big": 4.0}]
  g_ref = np.array([(16 * 5.0 - 8 * 9.0) / 8, (16 * 4.0 - 8 * 7.0) / 8])
  s_ref = np.array([(9.0 - 5.0) / (1 / 8 - 1 / 16), (7.0 - 4.0) / (1 / 8 - 1 / 16)])
  assert noise_scale.window_b_simple(raw, 0, 20, 8, 16) == pytest.approx(s_ref.sum() / g_ref.sum())
  assert noise_scale.second_half_b_simple(raw, 8, 16) == pytest.approx(s_ref[1] / g_ref[1])
  assert noise_scale.window_b_simple(raw, 0, 20) is None
