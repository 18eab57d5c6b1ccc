r"""Seed 001: uniform noise injection for large-batch training, VGG9 on CIFAR-10, BS 128 vs 8192.

Seed 001 (Naganuma & Yokota, "ノイズ注入による平均化を用いたラージバッチ学習の汎化性能改善手法の検討")
trains VGG9 on CIFAR-10 without preprocessing (``augment = "none"``) at batch 128 (SB) and 8192
(LB), without noise ("Base Line") and with uniform noise :math:`10^{-n}` added to every update,
eq. (1): :math:`\theta_{t+1} = \theta_t - \eta\nabla E(\theta_t) + \delta_t`,
:math:`\delta_t \sim U(-10^{-n}, 10^{-n})` (``config.noise``, `lbjax/optim/noise.py`). Its
Fig. 2 shows the learning curves, its Fig. 3 the 1-D linear interpolation between solutions.

What it should reproduce (the seed gives curves, no table): the noise runs end with a higher test
accuracy than the baseline at *both* batch sizes, the LB baseline is the lowest of all, and along
the interpolation (`lbjax.analysis.interpolate`) the LB solution's sharp minimum is visibly
flattened by the noise (Fig. 3d). The seed names annealing of the noise as future work (§4); the
sweep runs each noise level with and without it.

Assumptions (the seed states none of them): the hyperparameters of Li et al. (2018)'s SB-vs-LB
comparison of the same network — lr 0.1 at both batch sizes (no scaling), momentum 0.9, weight
decay 5e-4, 300 epochs, lr × 0.1 at epochs 150, 225 and 275 — with two differences from how Li et
al. train it: plain (not Nesterov) momentum SGD, and weight decay on kernels only (they decay
every parameter). ``--config.optimizer.nesterov=True --config.optimizer.mask=all`` runs their
form. Noise levels n ∈ {3, 4, 5}; annealing is exponential from 10^-n down to 10^-n/100 over
the run.

``sweep()`` = {SB, LB} × {baseline, 10^-3, 10^-4, 10^-5} × {constant, annealed noise} (14 runs).
The argument ``method=smoothout`` puts the same noise levels on SmoothOut (the gradient taken at
:math:`\theta + \delta`, `lbjax/optim/smoothout.py`) instead of eq. (1); ``seeds=N`` repeats
every run over N seeds::

    python -m experiments.run --config=configs/seed001_noise.py --root=runs/seed001 \
        --data_dir=/data/tfds
    python -m experiments.report --root=runs/seed001 --table=seed001_noise
    python -m lbjax.analysis.interpolate --a=runs/seed001/batch_size=128,noise.scale=0.0 \
        --b=runs/seed001/batch_size=8192,noise.scale=0.0 --out=runs/seed001/fig3_baseline.png

One run: ``python -m lbjax.main --config=configs/seed001_noise.py --workdir=runs/seed001_lb
--config.data_dir=/data/tfds --config.batch_size=8192 --config.noise.scale=1e-4``.
"""

from configs import default
from configs import sweeps
from lbjax.optim import registry

BATCH_SIZES = (128, 8192)       # SB, LB
NOISE_EXPONENTS = (3, 4, 5)     # noise 10^-n
ANNEALING = ("none", "exponential")
ANNEAL_FINAL_RATIO = 0.01
METHODS = ("noise", "smoothout")  # eq. (1) on the update, or SmoothOut on the weights
OPTIONS = {"method": "noise", "seeds": 1}


def get_config(arg=None):
  opts = sweeps.options(arg, OPTIONS)
  if opts["method"] not in METHODS:
    raise ValueError(f"config argument method: one of {METHODS}, got {opts['method']!r}")
  c = default.get_config()
  c.dataset = "cifar10"
  c.augment = "none"              # "学習データに前処理を適用せず"
  c.model.name = "vgg9"
  c.batch_size = BATCH_SIZES[0]
  c.num_epochs = 300.0
  c.optimizer = registry.config_block("sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
  c.schedule.name = "multistep"
  c.schedule.milestones = (150.0, 225.0, 275.0)
  c.schedule.lr_decay = 0.1
  c.schedule.warmup_epochs = 0.0
  c.eval_every_epochs = 5.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  return c


def sweep(arg=None):
  opts = sweeps.options(arg, OPTIONS)
  block = opts["method"]
  runs = []
  for batch_size in BATCH_SIZES:
    runs.append({"batch_size": batch_size, f"{block}.scale": 0.0})
    for n in NOISE_EXPONENTS:
      for annealing in ANNEALING:
        run = {"batch_size": batch_size, f"{block}.scale": 10.0 ** -n}
        if annealing != "none":
          run.update({f"{block}.annealing": annealing,
                      f"{block}.final_ratio": ANNEAL_FINAL_RATIO})
        runs.append(run)
  return sweeps.with_seeds(runs, opts["seeds"])
