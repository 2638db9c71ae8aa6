"""loss.alpha=auto on the tiny backbone: one normal run per alpha, the max dev F1 chosen and
recorded, the parent directory usable by evaluate.py, finished values skipped on a second call,
the plot, and the error paths."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from docre import sweep
from docre.config import load_config
from docre.errors import DocreError
from docre.plots import sweep_curves
from tests.cli import run_main

ROOT = Path(__file__).resolve().parent.parent


def sweep_config(tiny_backbone, out, *extra):
    # two values (alpha_base 1: the grid holds the values), 3 steps each, one dev evaluation
    return load_config(ROOT / "configs/smoke.yaml", [
        f"model.backbone={tiny_backbone}", f"output_dir={out}", "run_name=sweep", "loss.alpha=auto",
        "sweep.alpha_base=1", "sweep.alpha_grid=[16,2]", "train.max_steps=3", "train.eval_every=3",
        "data.cache_dir=none", *extra,
    ])


@pytest.fixture(scope="module")
def swept(tiny_backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    results = sweep.run(sweep_config(tiny_backbone, out))
    return out / "sweep", results


def test_one_normal_run_per_alpha(swept):
    run_dir, _ = swept
    for alpha in ("2", "16"):
        sub = run_dir / "alpha_sweep" / f"alpha={alpha}"
        assert (sub / "results.json").is_file() and (sub / "best.safetensors").is_file()
        assert load_config(sub / "config.yaml").loss == {"name": "atgl", "alpha": float(alpha)}


def test_sweep_json_picks_the_max_dev_f1(swept):
    run_dir, results = swept
    record = json.loads((run_dir / "alpha_sweep.json").read_text())
    assert [row["alpha"] for row in record["runs"]] == [2.0, 16.0]  # ascending, whatever the grid order
    for row in record["runs"]:  # each row holds its own run's scores
        sub_results = json.loads((Path(row["run_dir"]) / "results.json").read_text())
        assert row["dev"] == sub_results["dev"] and row["test"] == sub_results["test"]
    best = max(row["dev"]["f1"] for row in record["runs"])
    first_best = next(row for row in record["runs"] if row["dev"]["f1"] == best)
    assert record["chosen_alpha"] == first_best["alpha"] == results["alpha"]
    chosen = json.loads((Path(first_best["run_dir"]) / "results.json").read_text())
    assert results["dev"] == chosen["dev"] and results["test"] == chosen["test"]
    assert json.loads((run_dir / "results.json").read_text())["alpha"] == record["chosen_alpha"]
    assert json.loads((run_dir / "decode.json").read_text())["alpha"] == record["chosen_alpha"]
    # its cost is the whole sweep's (a table's time/run, a grid's estimate), not the chosen run's alone
    walls = [json.loads((Path(row["run_dir"]) / "results.json").read_text())["wall_seconds"] for row in record["runs"]]
    assert results["wall_seconds"] == pytest.approx(sum(walls)) and sum(walls) > max(walls)
    assert json.loads((run_dir / "results.json").read_text())["wall_seconds"] == results["wall_seconds"]
    assert load_config(run_dir / "config.yaml").loss["alpha"] == "auto"  # resumable as a sweep
    # the chosen run's learning curve, which plot_runs reads from RUN_DIR
    assert (run_dir / "metrics.jsonl").read_bytes() == (Path(first_best["run_dir"]) / "metrics.jsonl").read_bytes()


def test_the_choice_is_the_best_dev_f1_and_the_smaller_alpha_on_a_tie():
    def row(alpha, dev_f1, test_f1, dev_ign_f1):
        return {"alpha": alpha, "dev": {"f1": dev_f1, "ign_f1": dev_ign_f1}, "test": {"f1": test_f1}}

    # the best dev F1 in the middle of the grid; test F1 and dev Ign F1 would choose otherwise
    rows = [row(4.125, 0.40, 0.50, 0.45), row(8.25, 0.46, 0.41, 0.39), row(16.5, 0.43, 0.44, 0.40)]
    assert sweep.choose(rows)["alpha"] == 8.25
    assert sweep.choose(rows[::-1])["alpha"] == 8.25
    tie = [row(16.5, 0.46, 0.50, 0.45), row(4.125, 0.40, 0.41, 0.39), row(8.25, 0.46, 0.40, 0.40)]
    assert sweep.choose(tie)["alpha"] == 8.25  # the smaller of the two tied, in any order


def test_plot_and_curves(swept, tmp_path):
    run_dir, _ = swept
    assert (run_dir / "alpha_sweep.png").stat().st_size > 1000
    curves = sweep_curves(run_dir)
    record = json.loads((run_dir / "alpha_sweep.json").read_text())
    assert curves[("dev", "f1")] == ([2.0, 16.0], [100 * row["dev"]["f1"] for row in record["runs"]])
    assert run_main("plot_alpha", [str(run_dir), str(run_dir), "-o", str(tmp_path / "two.png")]) == 0
    assert (tmp_path / "two.png").stat().st_size > 1000
    with pytest.raises(DocreError, match=r"no alpha_sweep\.json"):
        run_main("plot_alpha", [str(tmp_path)])


def test_evaluate_works_on_the_parent_run_dir(swept):
    run_dir, results = swept
    result = subprocess.run([sys.executable, "evaluate.py", str(run_dir), "--split", "test", "--json"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["f1"] == results["test"]["f1"]


def test_finished_sweep_is_refused_without_overwrite(swept, tiny_backbone):
    run_dir, _ = swept
    with pytest.raises(DocreError, match="already finished"):
        sweep.run(sweep_config(tiny_backbone, run_dir.parent))


def test_second_call_skips_finished_values(swept, tiny_backbone, tmp_path):
    run_dir, _ = swept
    copy = tmp_path / "sweep"
    shutil.copytree(run_dir, copy)
    for name in ("results.json", "alpha_sweep.json"):  # as if stopped after the runs
        (copy / name).unlink()
    shutil.rmtree(copy / "alpha_sweep" / "alpha=16")
    kept = copy / "alpha_sweep" / "alpha=2" / "best.safetensors"
    before = kept.stat().st_mtime_ns
    results = sweep.run(sweep_config(tiny_backbone, tmp_path))
    assert kept.stat().st_mtime_ns == before  # alpha 2 was not trained again
    assert (copy / "alpha_sweep" / "alpha=16" / "results.json").is_file()
    assert results["alpha"] in (2.0, 16.0) and (copy / "alpha_sweep.json").is_file()


def test_other_config_in_the_run_dir_is_refused(swept, tiny_backbone):
    run_dir, _ = swept
    (run_dir / "results.json").rename(run_dir / "results.moved")
    try:
        with pytest.raises(DocreError, match="another config"):
            sweep.run(sweep_config(tiny_backbone, run_dir.parent, "seed=1"))
    finally:
        (run_dir / "results.moved").rename(run_dir / "results.json")


def test_grid_is_the_paper_alpha_times_the_multiples():
    cfg = load_config(None, ["loss.name=atgl", "loss.alpha=auto", "data.dataset=docred"])
    assert sweep.alpha_values(cfg) == [4.125, 8.25, 16.5, 33.0]
    cfg = load_config(None, ["loss.name=atgl", "loss.alpha=auto", "sweep.alpha_base=7.5", "sweep.alpha_grid=[1,0.5]"])
    assert sweep.alpha_values(cfg) == [3.75, 7.5]


def test_unknown_dataset_needs_alpha_base(monkeypatch):
    monkeypatch.setattr(sweep, "PAPER_ALPHA", {})
    cfg = load_config(None, ["loss.name=atgl", "loss.alpha=auto"])
    with pytest.raises(DocreError, match=r"set sweep\.alpha_base"):
        sweep.alpha_values(cfg)


def test_no_dev_split_is_refused_before_training(tmp_path):
    cfg = load_config(None, ["loss.name=atgl", "loss.alpha=auto", "data.dev_file=", f"output_dir={tmp_path}"])
    with pytest.raises(DocreError, match="needs a dev split"):
        sweep.tune_alpha(cfg)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("overrides, message", [
    (["loss.name=atl", "loss.gamma=auto"], "only ATGL's alpha is tuned on dev"),
    (["loss.name=atgl", "loss.alpha=auto", "sweep.alpha_grid=[]"], "sweep.alpha_grid"),
    (["loss.name=atgl", "loss.alpha=auto", "sweep.alpha_grid=[1,-2]"], "sweep.alpha_grid"),
])
def test_config_errors(overrides, message):
    with pytest.raises(DocreError, match=message):
        load_config(None, overrides)


def test_train_cli_dispatches_auto_to_the_sweep(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "configs/smoke.yaml", "loss.alpha=auto", "data.dev_file=",
                             f"output_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: loss.alpha=auto needs a dev split" in result.stderr
