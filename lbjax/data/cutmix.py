"""CutMix (Yun et al. 2019) on device, with seed 003's setting: probability 1, β = 1.

Seed 003 §3 adds CutMix after TrivialAugment (Table 1: 94.51 → 95.11 % with ResNet-56) and fixes
both of its hyperparameters, the probability of applying it and the Beta shape, to 1.0.

For example ``i`` with partner ``j`` (below), independently per example (Yun et al. Alg. A1,
``rand_bbox``):

  λ ~ Beta(1, 1) = U(0, 1),   r = √(1 − λ),   h = ⌊H·r⌋,   w = ⌊W·r⌋,
  (cy, cx) ~ U{0, ..., H−1} × U{0, ..., W−1},
  box = [cy − ⌊h/2⌋, cy + ⌊h/2⌋) × [cx − ⌊w/2⌋, cx + ⌊w/2⌋), each end clipped to the image,
  x̃_i = (1 − M) ⊙ x_i + M ⊙ x_j,    ỹ_i = (1 − a) · y_i + a · y_j,    a = |box| / (H·W),

where M is the box's mask. The label weight ``a`` is the area actually pasted, after clipping
(Yun et al. recompute λ the same way). Yun et al. draw one λ and one box per batch; here each
example draws its own from its own key (timm's ``mode="elem"``), so the draw is a function of the
example's row in the global batch and never of how the batch is split.

Partners: ``j = i XOR 1`` in the global batch, i.e. rows ``(2k, 2k+1)`` paste into each other.
The global batch is already a seeded random sample (``lbjax.data.pipeline``), so a fixed
pairing of rows pairs uniformly random distinct examples, as ``torch.randperm`` would (minus
self-pairs, which would mix nothing). Pairs never straddle a device: the pipeline gives every
device a contiguous block of ``B / devices`` rows starting at a multiple of that size, so when
the per-device batch is even each device holds whole pairs and the partner of its local row
``i`` is its local row ``i XOR 1``. The result is therefore identical on 1 and N devices and
across hosts; `GROUP_SIZE` is registered with ``lbjax.data.augment`` so that
``config_lib.validate`` rejects an odd per-device batch (``config.batch_size``).

References:
  Yun, Han, Oh, Chun, Choe, Yoo, "CutMix: Regularization Strategy to Train Strong Classifiers
  with Localizable Features", ICCV 2019, arXiv:1905.04899.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

PROBABILITY = 1.0  # seed 003: CutMix is applied to every example
GROUP_SIZE = 2     # examples mix within aligned pairs of rows of the global batch


class Box(NamedTuple):
  """Half-open pixel box ``[top, bottom) × [left, right)`` inside the image."""
  top: jnp.ndarray
  bottom: jnp.ndarray
  left: jnp.ndarray
  right: jnp.ndarray

  def area(self) -> jnp.ndarray:
    return (self.bottom - self.top) * (self.right - self.left)

  def mask(self, height: int, width: int) -> jnp.ndarray:
    """bool [H, W, 1], True inside the box."""
    rows = jnp.arange(height)[:, None, None]
    cols = jnp.arange(width)[None, :, None]
    return ((rows >= self.top) & (rows < self.bottom) & (cols >= self.left)
            & (cols < self.right))


def draw_box(key, height: int, width: int, *, probability: float = PROBABILITY) -> Box:
  """Yun et al.'s ``rand_bbox`` for one example, λ ~ Beta(1, 1) = U(0, 1) (seed 003's β);
  an empty box when the coin says no mixing."""
  apply_key, lam_key, y_key, x_key = jax.random.split(key, 4)
  # Beta(1, 1) is U(0, 1). Another β would be jax.random.beta(lam_key, β, β), whose gamma
  # rejection sampler costs seconds of compilation in every train step.
  lam = jax.random.uniform(lam_key)
  ratio = jnp.sqrt(1. - lam)
  half_h = jnp.floor(height * ratio).astype(jnp.int32) // 2
  half_w = jnp.floor(width * ratio).astype(jnp.int32) // 2
  cy = jax.random.randint(y_key, (), 0, height)
  cx = jax.random.randint(x_key, (), 0, width)
  # uniform [0, 1) < 1 always: with the seed's probability 1.0 every example is mixed.
  apply = jax.random.uniform(apply_key) < probability
  half_h, half_w = jnp.where(apply, half_h, 0), jnp.where(apply, half_w, 0)
  return Box(top=jnp.clip(cy - half_h, 0, height), bottom=jnp.clip(cy + half_h, 0, height),
             left=jnp.clip(cx - half_w, 0, width), right=jnp.clip(cx + half_w, 0, width))


def partners(batch_size: int) -> jnp.ndarray:
  """Local row of each example's partner: ``i XOR 1`` (see the module docstring)."""
  if batch_size % GROUP_SIZE:  # config_lib.validate reports this as config.batch_size.
    raise ValueError(f"CutMix needs an even per-device batch, got {batch_size}")
  return jnp.arange(batch_size) ^ 1


def cutmix(images, targets, keys, ctx=None, *, probability: float = PROBABILITY):
  """CutMix of one per-device batch (an ``lbjax.data.augment`` op).

  Args:
    images: float [b, H, W, C] (any value range: pasting commutes with per-channel affine maps
      such as ``normalize``).
    targets: float [b, K] soft targets.
    keys: per-example PRNG keys [b].
    ctx: unused (``lbjax.data.augment.Context``).
    probability: chance that an example is mixed at all (seed 003: 1.0).

  Returns:
    ``(images, targets)`` with each example's box filled from its partner and its targets
    mixed with weight ``area / (H·W)`` on the partner's.
  """
  del ctx
  b, h, w, _ = images.shape
  partner = partners(b)
  boxes = jax.vmap(lambda k: draw_box(k, h, w, probability=probability))(keys)
  masks = jax.vmap(lambda box: box.mask(h, w))(boxes)
  mixed_images = jnp.where(masks, images[partner], images)
  weight = (boxes.area() / (h * w)).astype(targets.dtype)[:, None]
  mixed_targets = (1. - weight) * targets + weight * targets[partner]
  return mixed_images, mixed_targets
