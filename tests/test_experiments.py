"""experiments/run.py (sweeps: run, skip, resume) and experiments/report.py (seed-shaped tables)."""

import csv
import json
import os
import shutil

import numpy as np
import pytest

from experiments import quickstart_seeds
from experiments import report as report_lib
from experiments import run as run_lib
from experiments import tables
from lbjax import metrics as metrics_lib
from lbjax.errors import ConfigError
from tests import experiment_runs
from tests import tiny_sweep_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_overrides_set_values_replace_blocks_and_name_runs():
  base = tiny_sweep_config.get_config()
  c = run_lib.apply_overrides(base, {"batch_size": 32, "optimizer.learning_rate": 0.2,
                                     "optimizer": {"name": "adam", "learning_rate": 1e-3}})
  assert c.batch_size == 32 and c.optimizer.to_dict() == {"name": "adam", "learning_rate": 1e-3}
  assert base.batch_size == 64  # the base config is untouched
  with pytest.raises(ConfigError, match=r"sweep\.optimizer\.nesterovv"):
    run_lib.apply_overrides(base, {"optimizer.nesterovv": True})
  with pytest.raises(ConfigError, match=r"sweep\.nothere\.x"):
    run_lib.apply_overrides(base, {"nothere.x": 1})
  assert run_lib.run_name({"batch_size": 8192, "noise.scale": 1e-3, "seed": 1}) == \
      "batch_size=8192,noise.scale=0.001,seed=1"
  assert run_lib.run_name({"run_name": "4_cutmix", "augment": "x", "seed": 2}) == "4_cutmix,seed=2"
  assert run_lib.run_name({"schedule.milestones": (150.0, 225.0), "data/dir": "a b"}) == \
      "schedule.milestones=150.0-225.0,data_dir=a_b"
  long = run_lib.run_name({f"k{i}": "v" * 20 for i in range(10)})
  assert len(long) == run_lib.MAX_NAME and long != run_lib.run_name({"k0": "w" * 300})


def test_plan_rejects_duplicate_runs_and_bad_values(tmp_path):
  config = tmp_path / "dup.py"
  config.write_text("from tests.tiny_sweep_config import get_config\n"
                    "def sweep():\n  return [{'seed': 1}, {'seed': 1}]\n")
  with pytest.raises(ConfigError, match=r"sweep\(\)\[1\]"):
    run_lib.plan(str(config), str(tmp_path / "root"))
  config.write_text("from tests.tiny_sweep_config import get_config\n"
                    "def sweep():\n  return [{'batch_size': 30}]\n")
  runs = run_lib.plan(str(config), str(tmp_path / "root"))
  with pytest.raises(ConfigError, match=r"config\.batch_size.*run batch_size=30"):
    run_lib.validate(runs, device_count=4)
  assert not os.path.exists(tmp_path / "root")  # nothing written before validation


def test_two_run_sweep_finishes_and_a_rerun_skips_both():
  root, first = experiment_runs.sweep()
  assert list(first) == ["seed=0", "seed=1"]
  for seed, name in enumerate(first):
    assert first[name]["status"] == "completed" and not first[name].get("skipped")
    status = metrics_lib.read_status(os.path.join(root, name))
    assert status["status"] == "completed" and status["step"] == status["total_steps"] == 12
    with open(os.path.join(root, name, "config.json")) as f:
      assert json.load(f)["seed"] == seed
  with open(os.path.join(root, run_lib.SWEEPS_FILE)) as f:
    assert json.load(f)[experiment_runs.CONFIG] == ["seed=0", "seed=1"]

  mtimes = {n: os.path.getmtime(os.path.join(root, n, "metrics.jsonl")) for n in first}
  again = run_lib.run_sweep(experiment_runs.CONFIG, root)
  assert list(again) == ["seed=0", "seed=1"]
  assert all(r["skipped"] and r["status"] == "completed" for r in again.values())
  assert mtimes == {n: os.path.getmtime(os.path.join(root, n, "metrics.jsonl")) for n in first}


def test_an_unfinished_run_is_resumed_and_a_changed_config_is_an_error(tmp_path, capsys):
  experiment_runs.sweep()
  root = str(tmp_path)
  shutil.copytree(experiment_runs.workdir("seed=0"), os.path.join(root, "seed=0"))
  # Killed after its last checkpoint, before the final status: status "running".
  metrics_lib.write_status(os.path.join(root, "seed=0"), "running", 12)
  os.makedirs(os.path.join(root, "seed=1"))
  with open(os.path.join(root, "seed=1", "config.json"), "w") as f:
    json.dump({"seed": 1, "batch_size": 1}, f)  # an edited config file's old run
  results = run_lib.run_sweep(experiment_runs.CONFIG, root)
  assert "resuming from step 12 of 12" in capsys.readouterr().out
  assert results["seed=0"]["status"] == "completed" and not results["seed=0"].get("skipped")
  assert metrics_lib.read_status(os.path.join(root, "seed=0"))["status"] == "completed"
  assert results["seed=1"]["status"] == "error"
  assert "--workdir" in results["seed=1"]["error"] and "batch_size" in results["seed=1"]["error"]


TINY_TABLE = tables.Table(
    "tiny", "Tiny table", "lr",
    rows=(("lr 0.05", {"optimizer.learning_rate": 0.05}),
          ("lr 1e8", {"optimizer.learning_rate": 1e8})),
    columns=(("BS 64", {"batch_size": 64}), ("BS 128", {"batch_size": 128})),
    seed={("lr 0.05", "BS 64"): 12.5, ("lr 1e8", "BS 64"): "diverged"})


def test_report_from_real_runs_has_the_seed_tables_rows_and_columns(tmp_path):
  root, results = experiment_runs.sweep("report")  # seeds 0 and 1, and lr 1e8 (diverges)
  assert [r["status"] for r in results.values()] == ["completed", "completed", "diverged"]
  accuracies = [100 * metrics_lib.read_status(os.path.join(root, f"seed={s}"))["test_accuracy"]
                for s in (0, 1)]
  mean = sum(accuracies) / 2
  std = abs(accuracies[0] - accuracies[1]) / 2 ** 0.5  # sample std of two values

  out = report_lib.report(root, TINY_TABLE, str(tmp_path / "out"))
  lines = out["markdown"].splitlines()
  table = [line for line in lines if line.startswith("|")]
  assert table[0] == "| lr | BS 64 seed | BS 64 ours | BS 128 seed | BS 128 ours |"
  assert table[2] == f"| lr 0.05 | 12.50 | {mean:.2f} ± {std:.2f} (n=2) | — | — |"
  assert table[3] == "| lr 1e8 | diverged | diverged | — | — |"
  assert len(table) == 4

  with open(out["paths"]["csv"]) as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["lr", "BS 64 seed", "BS 64 mean", "BS 64 std", "BS 64 n", "BS 64 diverged",
                     "BS 128 seed", "BS 128 mean", "BS 128 std", "BS 128 n", "BS 128 diverged"]
  assert [r[0] for r in rows[1:]] == ["lr 0.05", "lr 1e8"]
  assert float(rows[1][2]) == pytest.approx(mean, abs=1e-4)
  assert float(rows[1][3]) == pytest.approx(std, abs=1e-4)
  assert rows[1][4:6] == ["2", "0"] and rows[2][1:6] == ["diverged", "", "", "0", "1"]
  with open(out["paths"]["runs_csv"]) as f:
    runs = list(csv.DictReader(f))
  assert sorted((r["row"], r["status"]) for r in runs) == [
      ("lr 0.05", "completed"), ("lr 0.05", "completed"), ("lr 1e8", "diverged")]
  with open(out["paths"]["curves"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  # Without a table: one row per run (seeds merged), from ROOT/sweeps.json's unknown config.
  plain = report_lib.report(root, out_dir=str(tmp_path / "plain"), curves=False)
  labels = [label for label, _ in plain["table"].rows]
  assert labels == ["default", "optimizer.learning_rate=100000000.0,schedule.name=constant"]
  assert plain["cells"][("default", "test accuracy")].n == 2


def test_a_partly_diverged_or_unfinished_cell_says_so():
  table = TINY_TABLE

  def run(status, accuracy=None):
    return report_lib.RunResult("r", "/nonexistent", {}, {"status": status,
                                                         "test_accuracy": accuracy})
  cell = report_lib.summarize([run("completed", 0.9), run("diverged"), run("running")], table)
  assert cell.text() == "90.00 (1/3 diverged, 1 unfinished)"
  assert report_lib.summarize([run("diverged"), run("diverged")], table).text() == "diverged (2/2)"
  assert report_lib.summarize([run("preempted")], table).text() == "unfinished"
  assert report_lib.summarize([], table).text() == "—"


def test_seed_tables_hold_the_seeds_numbers():
  t2 = tables.seed003_table2()
  assert [label for label, _ in t2.columns] == ["η = 0.1", "η = 0.01", "η = 0.001"]
  assert t2.seed[("Adam", "η = 0.1")] == "diverged"
  assert t2.seed[("hybrid (提案手法)", "η = 0.01")] == 95.88
  t3 = tables.seed003_table3()
  values = [t3.seed[(r, c)] for r, _ in t3.rows for c, _ in t3.columns]
  # Seed 003: "精度の平均は97.03、分散は0.11" over the 25 cells of Table 3.
  assert len(values) == 25 and round(float(np.mean(values)), 2) == 97.03
  assert round(float(np.var(values)), 2) == 0.11
  assert tables.seed003_table1().seed[("+Weight Decay off", "精度 (%)")] == 95.73
  assert tables.seed000_table1().seed[("LARS", "BS16384")] == 91.67
  assert tables.seed002_table1().seed[("K-FAC", "2048")] == pytest.approx(64.9841)
  assert tables.for_config("configs/seed001_noise.py:method=smoothout") == "seed001_smoothout"
  for name, build in tables.TABLES.items():
    table = build()
    assert table.name == name
    assert set(table.seed) <= {(r, c) for r, _ in table.rows for c, _ in table.columns}


def _planned_runs(specs, tmp_path):
  """RunResults (no status yet) of the runs the config specs would make."""
  out = []
  for spec in specs:
    for run in run_lib.plan(os.path.join(ROOT, spec), str(tmp_path), data_dir="/nonexistent"):
      out.append(report_lib.RunResult(run.name, run.workdir,
                                      report_lib._flatten(json.loads(run.config.to_json())), None))
  return out


@pytest.mark.parametrize("table,specs,per_cell", [
    ("seed000_table1", ["configs/seed000_swap.py:seeds=2"], 2),
    ("seed001_noise", ["configs/seed001_noise.py"], 1),
    ("seed001_smoothout", ["configs/seed001_noise.py:method=smoothout"], 1),
    ("seed002_table1", [f"configs/seed002_{o}.py:bs={b}" for o in ("sgd", "adam", "kfac")
                        for b in (128, 512, 2048)], 1),
    ("seed003_table1", ["configs/seed003_ablation.py"], 1),
    ("seed003_table2", ["configs/seed003_table2.py"], 1),
    ("seed003_table3", ["configs/seed003_table3.py:seeds=3"], 3),
])
def test_each_seed_sweep_fills_its_table_exactly(table, specs, per_cell, tmp_path):
  t = tables.TABLES[table]()
  assert {tables.for_config(spec) for spec in specs} == {table}
  cells, unplaced = report_lib.place(t, _planned_runs(specs, tmp_path))
  assert not unplaced
  assert {key: len(runs) for key, runs in cells.items()} == {key: per_cell for key in cells}
  assert set(t.seed) <= set(cells)


def _fabricated_run(root, name, *, lr, batch_size, seed, accuracy, noise_scales=None,
                    sharpness=None):
  """A finished run directory as lbjax writes it: config.json, status.json, metrics.jsonl (with
  ``train_noise_scale`` per logging window if given) and ``sharpness.json`` if given."""
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"seed": seed, "batch_size": batch_size, "optimizer": {"name": "sgd",
                                                                     "learning_rate": lr}}, f)
  with open(os.path.join(workdir, metrics_lib.METRICS_FILE), "w") as f:
    for i, b in enumerate(noise_scales or [None] * 3):
      record = {"step": 10 * (i + 1), "train_loss": 1.0 / (i + 1), "train_epoch": 0.5 * (i + 1)}
      if b is not None:
        # The window's estimates: |G|² = 1 + i, tr(Σ) = b (1 + i); the EMA's ratio logged as b.
        record.update(train_grad_sq_small=2.0 + i, train_grad_sq_big=1.0, train_noise_scale=b,
                      train_noise_g_sq=1.0 + i, train_noise_trace_sigma=b * (1.0 + i))
      f.write(json.dumps(record) + "\n")
    f.write(json.dumps({"step": 30, "test_accuracy": accuracy, "epoch": 1.5}) + "\n")
  metrics_lib.write_status(workdir, "completed", 30, test_accuracy=accuracy)
  if sharpness is not None:
    top, trace, eps = sharpness
    with open(os.path.join(workdir, "sharpness.json"), "w") as f:
      json.dump({"workdir": workdir, "step": 30, "batches": 10, "batch_size": batch_size,
                 "devices": 4, "train_loss": 0.05, "top_eigenvalues": [top, top / 2, top / 3],
                 "hessian_trace": trace, "hessian_trace_stderr": 0.1 * trace,
                 "trace_samples": 100, "epsilon": 1e-3, "epsilon_sharpness": eps,
                 "epsilon_max_loss": 0.06, "epsilon_iterations": 10, "seed": 0,
                 "batchnorm": "evaluation mode", "seconds": {}}, f)
  return workdir


def test_report_adds_sharpness_and_noise_scale_columns_and_plot(tmp_path):
  root = str(tmp_path / "runs")
  _fabricated_run(root, "small,seed=0", lr=0.05, batch_size=64, seed=0, accuracy=0.95,
                  noise_scales=[40.0, 55.0, 61.5], sharpness=(12.0, 300.0, 0.8))
  _fabricated_run(root, "small,seed=1", lr=0.05, batch_size=64, seed=1, accuracy=0.96,
                  noise_scales=[38.0, 50.0, 58.5], sharpness=(16.0, 340.0, 1.2))
  # Large batch: one run measured for sharpness, noise scale not logged; one with neither.
  _fabricated_run(root, "large,seed=0", lr=0.05, batch_size=128, seed=0, accuracy=0.93,
                  sharpness=(40.0, 700.0, 3.5))
  _fabricated_run(root, "large,seed=1", lr=0.05, batch_size=128, seed=1, accuracy=0.92)

  out = report_lib.report(root, TINY_TABLE, str(tmp_path / "out"))
  # B_simple over the second half, steps (15, 30]: windows 20 and 30 (10 steps each), the ratio
  # of the mean estimates, not the last logged EMA.
  second_half = lambda b: (2 * b[1] + 3 * b[2]) / (2 + 3)
  assert out["measurements"]["small,seed=0"] == {
      "lambda_max": 12.0, "hessian_trace": 300.0, "epsilon_sharpness": 0.8,
      "noise_scale": pytest.approx(second_half([40.0, 55.0, 61.5]))}
  assert out["measurements"]["large,seed=1"] == {}
  lines = out["markdown"].splitlines()
  start = lines.index("## Sharpness and gradient noise scale")
  table = [line for line in lines[start:] if line.startswith("|")]
  assert table[0] == ("| lr | column | λ_max (Hessian) | tr H | ε-sharpness (%) | "
                      "B_simple (2nd half) |")
  std = lambda a, b: f"{np.std([a, b], ddof=1):.2g}"
  b0, b1 = second_half([40.0, 55.0, 61.5]), second_half([38.0, 50.0, 58.5])
  assert table[2] == (f"| lr 0.05 | BS 64 | 14 ± {std(12, 16)} (n=2) | 320 ± {std(300, 340)} "
                      f"(n=2) | 1 ± {std(0.8, 1.2)} (n=2) | {np.mean([b0, b1]):.4g} ± {std(b0, b1)} (n=2) |")
  assert table[3] == "| lr 0.05 | BS 128 | 40 | 700 | 3.5 | — |"
  assert len(table) == 4  # the lr 1e8 row has no runs
  assert "ε-sharpness at ε = 0.001" in out["markdown"]
  # The seed-shaped table above it is unchanged by the measurements.
  assert "| lr 0.05 | 12.50 | 95.50 ± 0.71 (n=2) | — | 92.50 ± 0.71 (n=2) |" in lines

  with open(out["paths"]["runs_csv"]) as f:
    rows = {r["run"]: r for r in csv.DictReader(f)}
  assert rows["small,seed=1"]["lambda_max"] == "16"
  assert float(rows["small,seed=1"]["noise_scale"]) == pytest.approx(b1)
  assert rows["large,seed=0"]["epsilon_sharpness"] == "3.5"
  assert rows["large,seed=0"]["noise_scale"] == "" and rows["large,seed=1"]["hessian_trace"] == ""

  x, y = report_lib.learning_curve(os.path.join(root, "small,seed=0"))["train_noise_scale"]
  np.testing.assert_allclose(x, [0.5, 1.0, 1.5])
  np.testing.assert_allclose(y, [40.0, 55.0, 61.5])
  with open(out["paths"]["noise_scale"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  # Runs without either: no second table, no noise-scale plot, the runs CSV keeps its columns.
  plain_root = str(tmp_path / "plain")
  _fabricated_run(plain_root, "small,seed=0", lr=0.05, batch_size=64, seed=0, accuracy=0.9)
  plain = report_lib.report(plain_root, TINY_TABLE, str(tmp_path / "plain_out"))
  assert "Sharpness" not in plain["markdown"] and "noise_scale" not in plain["paths"]
  with open(plain["paths"]["runs_csv"]) as f:
    assert next(csv.reader(f)) == ["row", "column", "run", "status", "step", "seed", "value"]


def _write_records(directory, records):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, metrics_lib.METRICS_FILE), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)


def test_report_plots_each_runs_trust_ratios_over_training(tmp_path):
  root = str(tmp_path / "runs")
  workdir = _fabricated_run(root, "small,seed=0", lr=0.05, batch_size=64, seed=0, accuracy=0.9)
  _fabricated_run(root, "large,seed=0", lr=0.05, batch_size=128, seed=0, accuracy=0.9)
  # A SWAP-shaped run: phase 1 (2 epochs) in phase1/, phase 2 (1 epoch) at the top level.
  kernels = [0.02, 0.03, 0.05, 0.08]
  _write_records(os.path.join(workdir, "phase1"), [
      {"step": 5 * (i + 1), "train_loss": 1.0, "train_epoch": 0.5 * (i + 1),
       "train_trust_ratio/Dense_0/bias": 1.0, "train_trust_ratio/Dense_0/kernel": kernels[i],
       "train_trust_ratio/Dense_1/kernel": 10 * kernels[i]} for i in range(4)]
      + [{"step": 20, "test_accuracy": 0.5, "epoch": 2.0}])
  _write_records(workdir, [
      {"step": 10, "train_loss": 0.5, "train_epoch": 1.0, "train_trust_ratio/Dense_0/bias": 1.0,
       "train_trust_ratio/Dense_0/kernel": 0.1, "train_trust_ratio/Dense_1/kernel": 0.9},
      {"step": 10, "test_accuracy": 0.9, "epoch": 1.0}])
  curves = report_lib.trust_ratio_curves(workdir)
  assert list(curves) == ["Dense_0/bias", "Dense_0/kernel", "Dense_1/kernel"]  # as logged
  x, y = curves["Dense_0/kernel"]
  np.testing.assert_allclose(x, [0.5, 1.0, 1.5, 2.0, 3.0])  # phase 2 after phase 1's 2 epochs
  np.testing.assert_allclose(y, kernels + [0.1])
  np.testing.assert_allclose(curves["Dense_1/kernel"][1], [0.2, 0.3, 0.5, 0.8, 0.9])
  assert report_lib.trust_ratio_curves(os.path.join(root, "large,seed=0")) == {}
  # The learning curve reads the same timeline as before.
  np.testing.assert_allclose(report_lib.learning_curve(workdir)["train_loss"][0], [0.5, 1, 1.5, 2, 3])

  out = report_lib.report(root, TINY_TABLE, str(tmp_path / "out"))
  with open(out["paths"]["trust_ratios"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.basename(out["paths"]["trust_ratios"]) == f"{TINY_TABLE.name}_trust_ratios.png"
  plain_root = str(tmp_path / "plain")
  _fabricated_run(plain_root, "small,seed=0", lr=0.05, batch_size=64, seed=0, accuracy=0.9)
  assert "trust_ratios" not in report_lib.report(plain_root, TINY_TABLE,
                                                 str(tmp_path / "plain_out"))["paths"]


def test_digits_study_compare_is_difference_of_means_against_twice_its_standard_error():
  from experiments import digits_study  # pylint: disable=g-import-not-at-top
  delta, threshold, exceeds = digits_study.compare([1.0, 2.0, 3.0], [5.0, 6.0, 7.0])
  assert delta == -4.0 and exceeds
  assert threshold == pytest.approx(2 * np.sqrt(1.0 / 3 + 1.0 / 3))  # s² = 1 on both sides
  assert digits_study.compare([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])[2] is False  # |−1| < 1.63
  assert digits_study.compare([1.0], [2.0, 3.0]) is None


def test_digits_study_reports_seeds_sharpness_noise_scale_spread_and_skips_on_rerun(tmp_path):
  from experiments import digits_study  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "study")
  config = os.path.join(ROOT, "tests", "tiny_digits_study_config.py")
  text = digits_study.run(root, num_points=3, processes=1, config=config)
  lines = text.splitlines()
  assert "config.seed 0, 1" in text and "Total wall time" in lines[-1]
  per_run = {}
  for run in ("1_sb_sgd", "2_lb_sgd"):
    acc, lam, trace, noise = [], [], [], []
    for seed in (0, 1):
      workdir = os.path.join(root, f"{run},seed={seed}")
      acc.append(100 * metrics_lib.read_status(workdir)["test_accuracy"])
      with open(os.path.join(workdir, "sharpness.json")) as f:
        sharp = json.load(f)
      assert (sharp["batches"], sharp["batch_size"], sharp["trace_samples"]) == (1, 64, 4)
      assert sharp["batchnorm"].startswith("evaluation mode")
      lam.append(sharp["top_eigenvalues"][0])
      trace.append(sharp["hessian_trace"])
      windows = [r for r in metrics_lib.read_metrics(workdir) if "train_noise_g_sq" in r]
      assert windows, workdir  # every run logs B_simple (tiny_digits_study_config.py)
      # B_simple over the second half: the windows ending in (S/2, S], each weighted by its
      # steps, the ratio of the mean estimates.
      steps = np.array([r["step"] for r in windows])
      length = np.diff(steps, prepend=0)
      inside = steps > steps[-1] / 2
      g = np.array([r["train_noise_g_sq"] for r in windows])
      t = np.array([r["train_noise_trace_sigma"] for r in windows])
      noise.append(np.sum((length * t)[inside]) / np.sum((length * g)[inside]))
    per_run[run] = acc
    row = next(line for line in lines if line.startswith(f"| {run} |")).split(" | ")
    assert row[5] == "0,1"
    assert row[6] == f"{np.mean(acc):.2f} ± {np.std(acc, ddof=1):.2f}"
    assert row[8] == f"{np.mean(lam):.4g} ± {np.std(lam, ddof=1):.2g}"
    assert row[9] == f"{np.mean(trace):.4g} ± {np.std(trace, ddof=1):.2g}"
    assert row[10] == f"{np.mean(noise):.4g} ± {np.std(noise, ddof=1):.2g}"
  a, b = per_run["2_lb_sgd"], per_run["1_sb_sgd"]
  delta = np.mean(a) - np.mean(b)
  bound = 2 * np.sqrt(np.var(a, ddof=1) / 2 + np.var(b, ddof=1) / 2)
  row = next(line for line in lines if line.startswith("| 2_lb_sgd − 1_sb_sgd |")).split(" | ")
  assert row[1] == f"{delta:+.3g} (2σ {bound:.2g})" + (" **exceeds**" if abs(delta) > bound
                                                       else "")
  assert os.path.exists(os.path.join(root, "interpolation.png"))
  assert "`1_sb_sgd,seed=0` (α = 0) and `2_lb_sgd,seed=0` (α = 1)" in text

  files = [os.path.join(root, f"{r},seed={s}", n) for r in ("1_sb_sgd", "2_lb_sgd")
           for s in (0, 1) for n in ("metrics.jsonl", "sharpness.json")]
  mtimes = [os.path.getmtime(f) for f in files]
  again = digits_study.run(root, num_points=3, processes=1, config=config)
  assert mtimes == [os.path.getmtime(f) for f in files]  # nothing retrained or re-measured
  row = next(line for line in again.splitlines() if line.startswith("| 1_sb_sgd |"))
  assert row.endswith("| (earlier) |") and f"{np.mean(per_run['1_sb_sgd']):.2f} ± " in row


def test_quickstart_seeds_table_reads_finished_runs_and_flags_a_missed_seed(tmp_path):
  """experiments/quickstart_seeds.py: a finished run is read, not rerun; the table gives each
  seed, the mean and the minimum, and says no for a row with a seed below the threshold."""
  root = str(tmp_path)
  for (name, seed), acc in {("sgd", 0): 0.98, ("sgd", 1): 0.96, ("nag", 0): 0.97,
                            ("nag", 1): 0.103}.items():
    workdir = os.path.join(root, quickstart_seeds.run_name(name, seed))
    os.makedirs(workdir)
    metrics_lib.write_status(workdir, "completed", 168, result_test_accuracy=acc)
  results = {(n, s): quickstart_seeds.run_one(root, n, s) for n in ("sgd", "nag") for s in (0, 1)}
  assert results[("nag", 1)] == {"status": "completed", "accuracy": 0.103, "seconds": None,
                                 "error": None}
  text, ok = quickstart_seeds.table(results, ["sgd", "nag"], [0, 1], 0.90)
  assert not ok
  rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")
          for line in text.splitlines()[2:]}
  assert rows["sgd"][2:] == ["0.9800", "0.9600", "0.9700", "0.9600", "yes"]
  assert rows["nag"][2:] == ["0.9700", "0.1030", "0.5365", "0.1030", "**no**"]
  assert rows["nag"][1] == "learning_rate=0.5, momentum=0.9, weight_decay=0.0005"
  _, ok = quickstart_seeds.table({k: v for k, v in results.items() if k[0] == "sgd"}, ["sgd"],
                                 [0, 1], 0.90)
  assert ok
  assert quickstart_seeds.command("nag", 1, "W")[2:] == [
      "lbjax.main", "--config=configs/quickstart.py:nag", "--workdir=W", "--config.seed=1",
      "--config.progress_bar=False"]
