"""Baseline optimizers from optax, with the weight-decay conventions of the seeds.

* ``sgd``: momentum SGD (optionally Nesterov) with L2 weight decay added to the gradient
  (g + λw), as PyTorch's SGD and seed 002 do.
* ``adam``: Adam with L2 weight decay added to the gradient (coupled, as torch.optim.Adam).
* ``adamw``: Adam with decoupled weight decay (Loshchilov & Hutter 2019).

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
