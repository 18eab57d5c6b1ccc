"""Baseline optimizers from optax, with the weight-decay conventions of the seeds.

* ``sgd``: momentum SGD (optionally Nesterov) with L2 weight decay added to the gradient
  (g + λw), as PyTorch's SGD and seed 002 do.
* ``adam``: Adam with L2 weight decay added to the gradient (coupled, as torch.optim.Adam).
* ``adamw``: Adam with decoupled weight decay (Loshchilov & Hutter 2019).
* ``radam``, ``adabelief``: optax's RAdam and AdaBelief directions with AdamW's decoupled decay,
  θ ← θ − η(u + λθ), as seed 003 runs them ("weight decay handled as in AdamW", §4).

Every ``weight_decay`` is a float or a schedule of the step (``lbjax.schedules``: switched off
late in training, seed 003).

``mask`` selects the tensors that get weight decay (kernels; not biases or BatchNorm).
"""

import optax


def sgd(learning_rate, momentum=0.9, nesterov=False, weight_decay=0.0, mask=None):
  """Momentum SGD with coupled L2 weight decay: v ← μv + (g + λw); w ← w − η v."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),
      optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov),
  )


def adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, mask=None):
  """Adam (Kingma & Ba 2015) on g + λw (coupled L2 decay)."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),
      optax.adam(learning_rate, b1=b1, b2=b2, eps=eps),
  )


def adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, mask=None):
  """AdamW (Loshchilov & Hutter 2019): θ ← θ − η(m̂/(√v̂+ε) + λθ)."""
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)


def _decoupled(direction: optax.GradientTransformation, learning_rate, weight_decay, mask):
  """θ ← θ − η(u + λθ) for the direction u: AdamW's chain around another direction."""
  return optax.chain(
      direction,
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def radam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, threshold=5.0, weight_decay=0.01,
          mask=None):
  """RAdam (Liu et al. 2020; seed 003 eqs. (11)–(15)) with decoupled weight decay.

  θ ← θ − η(γ_t m̂/(√v̂ + ε) + λθ) when ρ_t ≥ ``threshold`` (optax's 5), else θ − η(m̂ + λθ).
  """
  return _decoupled(optax.scale_by_radam(b1=b1, b2=b2, eps=eps, threshold=threshold),
                    learning_rate, weight_decay, mask)


def adabelief(learning_rate, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, weight_decay=0.01,
              mask=None):
  """AdaBelief (Zhuang et al. 2020; seed 003 eq. (16)) with decoupled weight decay.

  v ← β₂v + (1−β₂)(g − m)² + ε_root; θ ← θ − η(m̂/(√v̂ + ε) + λθ). Defaults are optax's.
  """
  return _decoupled(optax.scale_by_belief(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
                    learning_rate, weight_decay, mask)
