r"""lbjax K-FAC against ``kfac_jax.Optimizer``: LeNet5 on digits, same batches, same settings.

Both train the same flax LeNet5 from the same initial parameters on the same normalized digits
batches (batch 128, no random augmentation) for ``--steps`` steps with fixed learning rate,
momentum and damping (no adaptive damping, learning rate or momentum in kfac-jax), the true
Fisher with sampled labels (see ``FISHER``), factor moving average 0.95, inverses every 5 steps, no
weight decay and no burn-in. Both use the same K-FAC: per Dense/Conv layer ``A ⊗ G`` with KFC
patches, π-split factored Tikhonov damping, ``Δ ← μΔ − ε F̃⁻¹∇L``.

* lbjax: the real train step of ``lbjax.step.build`` (``Experiment.train_program`` on the mesh of
  one device, state donated, each host batch put on the device as training does): one
  forward/backward pass that also captures the statistics (plus the sampled-label backward pass
  from the logits), ``pmean``, ``tx.update(..., kfac_stats=...)``.
* kfac-jax 0.0.8: ``kfac_jax.Optimizer`` (jitted, ``multi_device=False``), the model found by its
  automatic layer registration.

Timing interleaves the two in chunks of steps in one process (timing noise between processes is
±20–40% here) after two untimed compile steps, and reports medians (and the CPU-time ratio, less
sensitive to a shared machine). Prints both loss curves, final losses (mean of the last 10 steps),
and last ``ratio: X`` = lbjax step time / kfac-jax step time (goal: X <= 0.9, final loss within
10%). The curves differ only through the sampled labels (each library draws its own).

    python benchmarks/kfac_vs_kfacjax.py [--steps=40] [--rounds=4]

Compatibility: kfac-jax 0.0.8 predates jax 0.10, where ``Primitive.get_bind_params`` returns only
the params (no sub-functions). :func:`_kfac_jax_compat` adapts kfac-jax's one caller, inside this
process only, while this script runs; site-packages are not modified.
"""

import argparse
import contextlib
import os
import statistics
import sys
import time

# One BLAS thread: on a small shared CPU, OpenBLAS's own threads (Cholesky, inverses) oversubscribe
# the cores and run 10-50x slower. Both optimizers use the same LAPACK calls.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import itertools

import common  # pylint: disable=g-bad-import-order,wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from configs import default  # pylint: disable=wrong-import-position
from lbjax import mesh as mesh_lib  # pylint: disable=wrong-import-position
from lbjax import step as step_lib  # pylint: disable=wrong-import-position
from lbjax.data import augment  # pylint: disable=wrong-import-position

SETTINGS = {"learning_rate": 0.003, "momentum": 0.9, "damping": 1e-2, "cov_ema_decay": 0.95,
                "inverse_update_period": 5}
# lbjax fisher -> kfac-jax estimation_mode. kfac-jax's "fisher_empirical" divides G by the batch
# size once more (its docstring says so: the empirical Fisher of the batch-mean gradient), so the
# matched comparison uses the true Fisher with sampled labels (kfac-jax's default mode).
FISHER = ("sampled", "fisher_gradients")
WARMUP = 2


@contextlib.contextmanager
def _kfac_jax_compat():
  """Runs kfac-jax 0.0.8 on jax >= 0.10 for the duration of the block (this process only).

  kfac-jax's ``tag_graph_matcher.eval_jaxpr_eqn`` unpacks ``(subfuns, params)`` from
  ``Primitive.get_bind_params``, which now returns just the params. The replacement handles both.
  """
  from kfac_jax._src import tag_graph_matcher as tgm  # pylint: disable=g-import-not-at-top
  original = tgm.eval_jaxpr_eqn

  def eval_jaxpr_eqn(eqn, in_values):
    bound = eqn.primitive.get_bind_params(eqn.params)
    subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
    with jax.extend.source_info_util.user_context(eqn.source_info.traceback):
      output = eqn.primitive.bind(*subfuns, *in_values, **params)
    return list(output) if eqn.primitive.multiple_results else [output]

  tgm.eval_jaxpr_eqn = eval_jaxpr_eqn
  try:
    yield
  finally:
    tgm.eval_jaxpr_eqn = original


def make_config(steps: int):
  c = default.get_config()
  c.dataset = "digits"
  c.image_size = 32
  c.augment = "normalize"
  c.model.name = "lenet5"
  c.batch_size = 128
  c.num_epochs = steps * c.batch_size / 1437 + 1e-6
  c.optimizer = c.optimizer.__class__(dict(name="kfac", weight_decay=0.0, fisher=FISHER[0],
                                           **SETTINGS))
  c.schedule.name = "constant"
  return c


class Lbjax:
  """The lbjax train step on one device's mesh, as ``train_and_evaluate`` runs it."""

  def __init__(self, exp):
    self.exp = exp
    self.mesh = mesh_lib.data_mesh(jax.devices()[:1])
    self.step_fn = exp.train_program(self.mesh)
    self.state = mesh_lib.put_replicated(exp.init_state(), self.mesh)

  def step(self, batch):
    """One step on host ``batch`` ``[1, 128, ...]``, copied to the device here (kfac-jax's jitted
    step copies its host batch too)."""
    self.state, metrics = self.step_fn(self.state, mesh_lib.put_batch(batch, self.mesh))
    return metrics["loss"]


class KfacJax:
  """``kfac_jax.Optimizer`` on the same model, loss and (normalized) batches."""

  def __init__(self, exp, batch0):
    import kfac_jax  # pylint: disable=g-import-not-at-top
    model, data = exp.model, exp.data
    mean, std = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)

    def loss_fn(params, batch):
      keys = jax.random.split(jax.random.PRNGKey(0), batch["label"].shape[0])
      images, targets = augment.apply(batch, keys, mode="normalize",
                                      num_classes=data.num_classes, mean=mean, std=std,
                                      train=True)
      logits = model.apply({"params": params}, images, train=True)
      kfac_jax.register_softmax_cross_entropy_loss(logits, targets)
      return optax.softmax_cross_entropy(logits, targets).mean()

    s = SETTINGS
    self.optimizer = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss_fn),
        l2_reg=0.0,
        use_adaptive_learning_rate=False, learning_rate_schedule=lambda _: s["learning_rate"],
        use_adaptive_momentum=False, momentum_schedule=lambda _: s["momentum"],
        use_adaptive_damping=False, damping_schedule=lambda _: s["damping"],
        estimation_mode=FISHER[1],
        curvature_ema=s["cov_ema_decay"],
        inverse_update_period=s["inverse_update_period"],
        num_burnin_steps=0,
        multi_device=False,
    )
    self.params = exp.init_state().params
    self.rng = jax.random.PRNGKey(0)
    self.state = self.optimizer.init(self.params, self.rng, batch0)
    self.step_count = 0

  def step(self, batch):
    self.params, self.state, stats = self.optimizer.step(
        self.params, self.state, jax.random.fold_in(self.rng, self.step_count), batch=batch,
        global_step_int=self.step_count)
    self.step_count += 1
    return stats["loss"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--rounds", type=int, default=4, help="timed chunks, interleaved")
  args = parser.parse_args()
  exp = step_lib.build(make_config(args.steps))
  # The same global batches for both: lbjax's put_batch takes [1, 128, ...], kfac-jax [128, ...].
  batches = [exp.train_batch(step, local_device_count=1) for step in range(args.steps)]
  flat = [jax.tree.map(lambda x: x[0], b) for b in batches]

  with _kfac_jax_compat():
    runners = {"lbjax": Lbjax(exp), "kfac-jax": KfacJax(exp, flat[0])}
    inputs = {"lbjax": batches, "kfac-jax": flat}
    losses = {name: [] for name in runners}
    # Steps 0 and 1 compile (the inverse-refresh and plain variants); the remaining steps are
    # timed in interleaved chunks.
    for name, runner in runners.items():
      for step in range(WARMUP):
        losses[name].append(jax.block_until_ready(runner.step(inputs[name][step])))
    times = {name: [] for name in runners}
    cpu = {name: 0.0 for name in runners}
    bounds = np.linspace(WARMUP, args.steps, args.rounds + 1).astype(int)
    for rnd, (lo, hi) in enumerate(itertools.pairwise(bounds)):
      for name, runner in runners.items():
        start, start_cpu = time.perf_counter(), time.process_time()
        chunk = [runner.step(batch) for batch in inputs[name][lo:hi]]
        jax.block_until_ready(chunk)
        times[name].append((time.perf_counter() - start) / (hi - lo))
        cpu[name] += time.process_time() - start_cpu
        losses[name] += chunk
        print(f"round {rnd} {name}: steps {lo}-{hi - 1}, {times[name][-1] * 1e3:.1f} ms/step",
              flush=True)
    curves = {name: [float(np.asarray(l).reshape(-1)[0]) for l in jax.device_get(ls)]
              for name, ls in losses.items()}

  every = max(1, args.steps // 12)
  print("step " + " ".join(f"{name:>10}" for name in curves))
  for i in sorted(set(range(0, args.steps, every)) | {args.steps - 1}):
    print(f"{i:4d} " + " ".join(f"{curves[name][i]:10.4f}" for name in curves))
  final = {name: float(np.mean(c[-10:])) for name, c in curves.items()}
  ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
  for name in curves:
    print(f"{name}: final loss (mean of last 10 steps) {final[name]:.4f}, "
          f"median {ms[name]:.1f} ms/step")
  print(f"CPU-time ratio (all threads, timed steps): {cpu['lbjax'] / cpu['kfac-jax']:.3f}")
  print(f"final loss relative difference: "
        f"{abs(final['lbjax'] - final['kfac-jax']) / final['kfac-jax']:.3f}")
  print(common.machine_line())
  print(common.memory_line())
  print(f"ratio: {ms['lbjax'] / ms['kfac-jax']:.3f}")


if __name__ == "__main__":
  main()
