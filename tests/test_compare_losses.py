"""scripts/compare_losses.py end to end with the tiny backbone (2 losses x 1 seed, two steps each):
runs, table, plots, BCE's tuned threshold carried through decode.json to test and load_trained,
skipping finished runs, and the argument errors."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from docre.errors import DocreError
from tests.cli import fake_training

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def compare(*args):
    return subprocess.run([sys.executable, "scripts/compare_losses.py", "configs/smoke.yaml", *args],
                          cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def comparison(tiny_backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    # no top-k cap: after two steps gold relations are rarely among a pair's top 4 of 96, and BCE's
    # threshold is only tuned when some cut reaches F1 > 0
    overrides = [f"model.backbone={tiny_backbone}", "train.max_steps=2", "eval.top_k=97"]
    result = compare("--losses", "atgl,bce", "--output-dir", str(out), *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, overrides, result


def test_runs_table_and_plots(comparison):
    out, _, result = comparison
    report = json.loads((out / "comparison.json").read_text())
    assert [row["label"] for row in report["runs"]] == ["atgl(alpha=16.5)", "bce(threshold=0.5)"]
    for row in report["runs"]:
        run_dir = Path(row["run_dir"])
        assert run_dir.name == f"smoke-{row['loss']}-s66"
        results = json.loads((run_dir / "results.json").read_text())
        assert results["steps"] == 2
        test = results["test"]
        assert row["f1"] == test["f1"] and row["ign_f1"] == test["ign_f1"]
        assert row["false_positives"] == test["num_predicted"] - test["num_correct"]
        assert row["false_negatives"] == test["num_gold"] - test["num_correct"]
        assert row["seconds_per_step"] == results["seconds_per_step"]
        assert row["violation_rate"] is not None and 0 <= row["violation_rate"] <= 1
        assert (out / "plots" / run_dir.name / "margins-test.png").read_bytes().startswith(PNG)
    assert (out / "plots" / "comparison.png").read_bytes().startswith(PNG)
    table = (out / "comparison.md").read_text()
    assert "| smoke-atgl | atgl(alpha=16.5) | 66 |" in table and "| smoke-bce | bce(threshold=0.5) | 66 | threshold=" in table
    assert "| run | loss (keywords as trained) | seed | decode (tuned on dev) | P | R | F1 | Ign F1 | FP | FN |" in table
    assert table.strip() in result.stdout.replace("\r", "")


def test_bce_threshold_is_tuned_on_dev_and_reused(comparison):
    from docre.run_dir import load_trained

    out, _, _ = comparison
    run_dir = out / "smoke-bce-s66"
    decode = json.loads((run_dir / "decode.json").read_text())
    assert set(decode) == {"threshold"} and 0 <= decode["threshold"] <= 1 and decode["threshold"] != 0.5
    results = json.loads((run_dir / "results.json").read_text())
    best = json.loads((run_dir / "best.json").read_text())
    assert results["decode"] == decode and best["threshold"] == decode["threshold"]
    _, _, _, loss_fn, _ = load_trained(run_dir, torch.device("cpu"))
    assert loss_fn.threshold == decode["threshold"]
    assert not (out / "smoke-atgl-s66" / "decode.json").read_text().strip("{}\n ")  # nothing to tune for ATGL


def test_finished_runs_are_skipped_and_settings_checked(comparison):
    out, overrides, _ = comparison
    before = json.loads((out / "comparison.json").read_text())["runs"]
    again = compare("--losses", "atgl,bce", "--output-dir", str(out), *overrides)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("finished earlier, skipped") == 2
    assert json.loads((out / "comparison.json").read_text())["runs"] == before
    changed = compare("--losses", "atgl", "--output-dir", str(out), overrides[0], "train.max_steps=3", overrides[2])
    assert changed.returncode == 1 and "holds a run of another config (train.max_steps: 2 -> 3)" in changed.stderr


def test_runs_tabulates_finished_runs_in_the_grids_row_order(comparison, tmp_path):
    # the same runs as a reproduce.py grid folder: copied, its grid.json listing bce first, a third run
    # unfinished; --runs tabulates the two finished ones, rows identical to the training command's
    out, _, _ = comparison
    trained = {row["group"]: row for row in json.loads((out / "comparison.json").read_text())["runs"]}
    grid = tmp_path / "grid"
    for name in ("smoke-atgl-s66", "smoke-bce-s66"):
        shutil.copytree(out / name, grid / name)
    shutil.copytree(out / "smoke-atgl-s66", grid / "smoke-afl-s66")
    (grid / "smoke-afl-s66" / "results.json").unlink()
    (grid / "grid.json").write_text(json.dumps({"rows": [{"name": "smoke-bce", "published": {"test_f1": 50.0}},
                                                         {"name": "smoke-atgl", "published": {"test_f1": 60.0,
                                                                                              "test_ign_f1": 59.5}}]}))
    result = subprocess.run([sys.executable, "scripts/compare_losses.py", "--runs", str(grid)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not finished, left out: smoke-afl-s66" in result.stdout
    rows = json.loads((grid / "comparison.json").read_text())["runs"]
    assert [row["group"] for row in rows] == ["smoke-bce", "smoke-atgl"]
    for row in rows:
        expected = trained[row["group"]] | {"run_dir": str(grid / f"{row['group']}-s66")}
        assert row == expected
    assert (grid / "plots" / "comparison.png").read_bytes().startswith(PNG)
    table = (grid / "comparison.md").read_text()
    assert f"--runs {grid} --split test" in table
    f1 = {row["group"]: f"{100 * row['f1']:.2f}" for row in rows}
    ign = {row["group"]: f"{100 * row['ign_f1']:.2f}" for row in rows}
    assert f"| smoke-bce | {f1['smoke-bce']} | 50.00 | {ign['smoke-bce']} | – |" in table
    assert f"| smoke-atgl | {f1['smoke-atgl']} | 60.00 | {ign['smoke-atgl']} | 59.50 |" in table
    assert "Ordering by test F1: Kendall's tau " in table and " over 2 rows (" in table


def test_kendall_tau_by_hand(script):
    assert script.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == (pytest.approx(4 / 6), 5, 1)  # one swapped pair
    assert script.kendall_tau([1, 2, 3], [3, 2, 1]) == (-1.0, 0, 3)
    assert script.kendall_tau([1, 1, 2], [1, 2, 3]) == (pytest.approx(2 / 3), 2, 0)  # the tied pair counts as neither
    summary = [{"group": g, "f1": f, "ign_f1": f - 0.01} for g, f in (("a", 0.40), ("b", 0.42), ("c", 0.30))]
    lines = script.paper_section(summary, {"a": {"test_f1": 73.3, "test_ign_f1": 72.5}, "b": {"test_f1": 77.3},
                                           "c": {"note": "not in the paper"}})
    assert "| a | 40.00 | 73.30 | 39.00 | 72.50 | 2 | 2 |" in lines and "| b | 42.00 | 77.30 | 41.00 | – | 1 | 1 |" in lines
    assert not any(line.startswith("| c ") for line in lines)
    assert lines[-1] == "Ordering by test F1: Kendall's tau 1.00 over 2 rows (1 pair ordered alike, 0 reversed, the rest tied)."
    assert script.paper_section(summary, {}) == []


def test_runs_errors(tmp_path):
    (tmp_path / "empty" / "run-s1").mkdir(parents=True)
    (tmp_path / "empty" / "run-s1" / "config.yaml").write_text("seed: 1\n")
    for args, message in [(["--runs", str(tmp_path / "empty")], f"error: {tmp_path / 'empty'}: no finished run "
                                                                 "(a run directory with results.json) to tabulate"),
                          (["--runs", str(tmp_path / "nothing")], f"error: {tmp_path / 'nothing'}: not a directory"),
                          (["--runs", str(tmp_path), "--losses", "atl"], "error: --runs DIR tabulates finished runs: "
                                                                        "give no CONFIG, key=value or --losses with it"),
                          ([], "error: give a CONFIG and --losses (to train and compare), or --runs DIR "
                               "(to tabulate finished runs)")]:
        result = subprocess.run([sys.executable, "scripts/compare_losses.py", *args], cwd=ROOT, capture_output=True,
                                text=True)
        assert result.returncode == 1 and result.stderr.strip() == message, (args, result.stderr)


@pytest.fixture(scope="module")
def script():
    from docre.cli import compare_losses

    return compare_losses


@pytest.mark.parametrize("argv, message", [
    (["--losses", "atgl,focal"], "unknown loss 'focal'"),
    (["--losses", "atgl,atgl"], "names an item twice"),
    (["--losses", " , "], r"^--losses: empty list$"),
    (["--losses", "atgl", "--seeds", ","], r"^--seeds: empty list$"),
    (["--losses", "atgl", "--seeds", "1,x"], "not a comma-separated list of integers"),
    (["--losses", "atgl", "loss.alpha=3"], "set by compare_losses.py for each run"),
    (["--losses", "atgl", "seed=3"], "set by compare_losses.py for each run"),
    (["--losses", "atgl", "train.epoch=3"], "unknown key 'train.epoch'"),
])
def test_argument_errors(script, monkeypatch, argv, message):
    monkeypatch.setattr(sys, "argv", ["compare_losses.py", "configs/smoke.yaml", *argv])
    with pytest.raises(DocreError, match=message):
        script.main()


def test_jobs_must_be_at_least_one(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["compare_losses.py", "configs/smoke.yaml", "--losses", "atgl", "--jobs", "0"])
    with pytest.raises(SystemExit) as exit_:
        script.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "compare_losses.py: error: --jobs must be at least 1"


def test_a_split_without_labelled_scores_is_refused(script, tmp_path):
    # an unlabelled test split: results.json holds no counts to tabulate (checked before the run's config is read)
    with pytest.raises(DocreError, match=rf"^{re.escape(str(tmp_path))}: no labelled test scores in results\.json "
                                         r"\(is the test split unlabelled\?\)$"):
        script.table_row("row", tmp_path, {"dev": {"f1": 0.5, "num_predicted": 1}, "test": {}}, "test", tmp_path)


def test_loss_signature_fills_in_defaults(script):
    assert script.loss_signature({"name": "hingeabl"}) == ("hingeabl(margin=5.0)", {"margin": 5.0})
    assert script.loss_signature({"name": "atl"}) == ("atl()", {})
    assert script.loss_signature({"name": "ncrl", "shift": 0.1})[0] == "ncrl(shift=0.1)"
    # keywords the trainer computes from the training split say so, not None
    assert script.loss_signature({"name": "ssr_pu"})[0].startswith("ssr_pu(priors=training, margin=0.25, ")
    assert script.loss_signature({"name": "amtl"})[0].startswith("amtl(spaces=training, ")
    assert script.loss_signature({"name": "amtl", "spaces": "redocred"})[0].startswith("amtl(spaces=redocred, ")


def test_summary_over_seeds(script):
    rows = [{"group": "atl", "label": "atl()", "loss": "atl", "seed": s, "precision": 0.5, "recall": 0.5, "f1": f1, "ign_f1": 0.4,
             "false_positives": fp, "false_negatives": 10, "offset_std": 0.1, "violation_rate": None,
             "seconds_per_step": 1.0} for s, f1, fp in ((1, 0.6, 10), (2, 0.7, 20))]
    (entry,) = script.summarise(rows)
    assert entry["seeds"] == [1, 2] and entry["f1"] == pytest.approx(0.65)
    assert entry["f1_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert entry["false_positives"] == 15 and entry["violation_rate"] is None
    rows = [r | {"decode": {}, "logits_false_positives": None, "run_dir": f"atl-s{r['seed']}"} for r in rows]
    assert "Mean ± std over seeds" in script.markdown(rows, [entry], "test", "cmd")
    # a row with one finished seed has no sample std: none is claimed (not "± 0.00")
    lone = rows[0] | {"group": "sat", "label": "sat()", "loss": "sat", "f1": 0.6}
    (_, single) = script.summarise(rows + [lone])
    assert single["seeds"] == [1] and single["f1"] == 0.6 and single["f1_std"] is None
    line = next(line for line in script.markdown(rows + [lone], [entry, single], "test", "cmd").splitlines()[::-1]
                if line.startswith("| sat | sat() | 1 |"))
    assert "±" not in line and "| 60.00 |" in line


def fake_finished(run_dir: Path, seed: int, f1: float, overrides: tuple[str, ...] = ()) -> Path:
    """A finished run as table_row reads it: its config.yaml and results.json with test counts, no
    saved logits (so no threshold diagnostics: scores only)."""
    from docre.config import load_config, save_config

    run_dir.mkdir(parents=True)
    save_config(load_config(ROOT / "configs/smoke.yaml", [f"seed={seed}", *overrides]), run_dir / "config.yaml")
    test = {"precision": f1, "recall": f1, "f1": f1, "ign_f1": f1, "num_predicted": 10, "num_gold": 10, "num_correct": 5}
    (run_dir / "results.json").write_text(json.dumps({"dev": test, "test": test, "seconds_per_step": 1.0}))
    return run_dir


def test_runs_lists_failed_runs_as_failed(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the config's relative paths are not read: nothing trains
    fake_finished(tmp_path / "good-s1", 1, 0.5)
    for name in ("bad-s1", "bad-s2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("seed: 1\n")
        (tmp_path / name / "failed.json").write_text(json.dumps({"error": f"{name}: out of memory"}))
    (tmp_path / "slow-s1").mkdir()
    (tmp_path / "slow-s1" / "config.yaml").write_text("seed: 1\n")  # still running: neither finished nor failed
    monkeypatch.setattr(sys, "argv", ["compare_losses.py", "--runs", str(tmp_path)])
    assert script.main() == 0
    failed = "Failed (2; their failed.json): bad-s1: bad-s1: out of memory; bad-s2: bad-s2: out of memory."
    out = capsys.readouterr().out.splitlines()
    assert failed in out and "not finished, left out: slow-s1" in out
    assert failed in (tmp_path / "comparison.md").read_text().splitlines()
    report = json.loads((tmp_path / "comparison.json").read_text())
    assert report["failed"] == {str(tmp_path / name): f"{name}: out of memory" for name in ("bad-s1", "bad-s2")}
    assert [row["group"] for row in report["runs"]] == ["good"]


def test_a_row_whose_seeds_differ_in_keywords_names_each(script, tmp_path, monkeypatch):
    fake_finished(tmp_path / "atgl-s1", 1, 0.5)
    fake_finished(tmp_path / "atgl-s2", 2, 0.7, ("loss.alpha=4.0",))
    monkeypatch.setattr(sys, "argv", ["compare_losses.py", "--runs", str(tmp_path)])
    assert script.main() == 0
    (entry,) = json.loads((tmp_path / "comparison.json").read_text())["summary"]
    assert entry["label"] == "atgl(alpha=16.5) / atgl(alpha=4.0)" and entry["f1"] == pytest.approx(0.6)
    assert "| atgl | atgl(alpha=16.5) / atgl(alpha=4.0) | 2 | " in (tmp_path / "comparison.md").read_text()


def test_the_finished_runs_are_tabulated_when_another_failed(script, monkeypatch, tmp_path):
    # bce's (fake) training exits 1 and leaves failed.json; atgl's "finishes": its table is written, then the error raised
    def finish(name):
        run_dir = tmp_path / name
        if name == "smoke-bce-s66":
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "failed.json").write_text(json.dumps({"error": "CUDA out of memory"}))
            return 1
        shutil.rmtree(run_dir, ignore_errors=True)
        fake_finished(run_dir, 66, 0.5)
        return 0

    started = fake_training(monkeypatch, finish)
    monkeypatch.setattr(sys, "argv", ["compare_losses.py", "configs/smoke.yaml", "--losses", "bce,atgl",
                                      "--output-dir", str(tmp_path)])
    with pytest.raises(DocreError, match=r"^1 of 2 runs failed: smoke-bce-s66 \(see their train\.log; "
                                         r"the same command retries them\)$"):
        script.main()
    assert started == ["smoke-bce-s66", "smoke-atgl-s66"]  # the failure stopped none of the others
    report = json.loads((tmp_path / "comparison.json").read_text())
    assert [row["group"] for row in report["runs"]] == ["smoke-atgl"]
    assert report["failed"] == {str(tmp_path / "smoke-bce-s66"): "CUDA out of memory"}
    assert "Failed (1; their failed.json): smoke-bce-s66: CUDA out of memory." in (tmp_path / "comparison.md").read_text()
