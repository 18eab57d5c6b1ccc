"""Seed 003's data recipe on the digits: TrivialAugment Wide + CutMix (probability 1, β = 1).

The quickstart (LeNet-5 on scikit-learn's digits at 32x32, SGD + cosine) with seed 003 §3's
augmentation: random crop, one TrivialAugment op per image (``lbjax/data/trivialaugment.py``),
normalisation, then CutMix between neighbouring rows of the global batch
(``lbjax/data/cutmix.py``). No flips: digits are not mirror-symmetric. The stronger
augmentation needs longer training than the quickstart's 15 epochs.

Expected: test accuracy >= 0.90 (measured 0.967, about 90 s of CPU time on 2 cores). The train
accuracy is the predicted label's share of each CutMix image (`lbjax.train.soft_accuracy`), so it
stays far below the test accuracy (measured 0.43 at the end).

    python -m lbjax.main --config=configs/seed003_augment_digits.py \\
        --workdir=runs/seed003_augment_digits
"""

from configs import quickstart


def get_config():
  c = quickstart.get_config()
  c.augment = "crop+trivialaugment+cutmix+normalize"
  c.num_epochs = 30.0
  c.eval_every_epochs = 10.0
  return c
