"""Result tables and plots from run directories: hand-worked means and sample stds, grouping by name
without the seed, published numbers beside ours, learning curves per epoch, PNG files."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from docre.errors import DocreError
from docre.plots import epoch_curves, mean_band, plot_bars, plot_curves
from docre.summary import collect, find_runs, group_runs, markdown_table, mean_std, summarize, write_summary
from tests.cli import run_main

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(folder: Path, seed: int, dev_f1: float | None, test: dict | None = None, **extra) -> Path:
    """A run directory as train() leaves it (only what the summary reads); dev_f1=None: unfinished."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"seed: {seed}\n")
    if dev_f1 is not None:
        results = {"dev": {"f1": dev_f1, "precision": 0.5, "num_predicted": 10}, "wall_seconds": 90.0 * seed,
                   "seconds_per_step": 0.5, "peak_rss_mb": 2048.0, "peak_gpu_mb": None, "steps": 100, **extra}
        if test is not None:
            results["test"] = test
        (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_mean_and_sample_std_by_hand():
    stat = mean_std([0.70, 0.72, 0.74])
    assert stat["mean"] == pytest.approx(0.72) and stat["std"] == pytest.approx(0.02)  # sqrt((.02² + 0 + .02²) / 2)
    assert mean_std([0.5]) == {"mean": 0.5, "std": None, "values": [0.5]}


def test_runs_inside_a_run_are_left_out(tmp_path):
    outer = fake_run(tmp_path / "t" / "atgl-s66", 66, 0.5)
    values = [fake_run(outer / "alpha_sweep" / f"alpha={a}", 66, 0.5) for a in (4.125, 8.25)]
    other = fake_run(tmp_path / "t" / "atl-s66", 66, 0.4)
    assert find_runs(tmp_path) == [outer, other]  # sorted; the sweep's values belong to its run
    assert find_runs(outer / "alpha_sweep") == values


def test_runs_group_by_name_without_the_seed(tmp_path):
    runs = [tmp_path / "t" / name for name in ("atl-s66", "atl-s67", "atgl-s66", "minilm-s2-x-s66", "plain")]
    assert group_runs(runs) == {"atl": runs[:2], "atgl": [runs[2]], "minilm-s2-x": [runs[3]], "plain": [runs[4]]}
    other = tmp_path / "u" / "atl-s66"
    assert set(group_runs([runs[0], other], tmp_path)) == {"t/atl", "u/atl"}  # two tables: prefixed by folder


def test_summary_table_by_hand(tmp_path):
    a = [fake_run(tmp_path / f"a-s{s}", s, f1, {"f1": f1 - 0.1, "ign_f1": f1 - 0.2})
         for s, f1 in ((1, 0.70), (2, 0.72), (3, 0.74))]
    b = [fake_run(tmp_path / "b-s1", 1, 0.60), fake_run(tmp_path / "b-s2", 2, None)]
    rows = summarize({"a": a, "b": b}, {"a": {"test_f1": 77.26, "dev_f1": 61.09, "dev_f1_std": 0.16, "note": "from a paper"}},
                     {"a": 3, "b": 2})
    first, second = rows
    assert first["n"] == 3 and first["seeds"] == [1, 2, 3] and first["unfinished"] == []
    assert first["dev"]["f1"]["mean"] == pytest.approx(0.72) and first["dev"]["f1"]["std"] == pytest.approx(0.02)
    assert first["test"]["ign_f1"]["mean"] == pytest.approx(0.52)
    assert first["cost"]["wall_seconds"]["mean"] == pytest.approx(180.0) and "peak_gpu_mb" not in first["cost"]  # None on CPU
    assert second["n"] == 1 and second["dev"]["f1"]["std"] is None and second["test"] == {}
    assert second["unfinished"] == [str(b[1])]

    text = markdown_table(rows, "T", "a paper")
    lines = text.splitlines()
    assert lines[0] == "### T"
    header = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert header == ["row", "model", "loss", "source", "n", "dev P", "dev F1", "test F1", "test Ign F1", "time/run",
                      "s/step", "peak memory"]
    assert lines[4] == ("| a | atlop | atl | docre | 3/3 | 50.00 ± 0.00 | 72.00 ± 2.00 | 62.00 ± 2.00 | 52.00 ± 2.00 "
                        "| 3.0 min | 0.50 | 2.0 GiB RAM |")
    assert lines[5] == "|  |  |  | paper |  | – | 61.09 ± 0.16 | 77.26 | – |  |  |  |"
    assert lines[6].startswith("| b | atlop | atl | docre | 1/2 | 50.00 | 60.00 | – | – | 90 s |")
    assert "- a: from a paper" in lines and "Published numbers: a paper." in lines
    assert any(line.startswith("Not finished yet (1): b-s2") for line in lines)

    markdown, json_path = write_summary(rows, tmp_path / "out", "T", "a paper")
    assert markdown.read_text() == text
    saved = json.loads(json_path.read_text())
    assert saved["rows"][0]["dev"]["f1"]["values"] == [0.70, 0.72, 0.74]


def test_evidence_columns_appear_when_a_row_predicts_evidence(tmp_path):
    evidence = {"f1": 0.5, "evidence_precision": 0.25, "evidence_recall": 0.5, "evidence_f1": 1 / 3,
                "num_evidence_predicted": 8}
    rows = summarize({"dreeam": [fake_run(tmp_path / "dreeam-s1", 1, 0.6, evidence)],
                      "atlop": [fake_run(tmp_path / "atlop-s1", 1, 0.6, {"f1": 0.4})],
                      "kd": [fake_run(tmp_path / "kd-s1", 1, 0.6, {**evidence, "num_evidence_predicted": 0})]})
    lines = markdown_table(rows).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["row", "model", "loss", "source", "n", "dev P", "dev F1", "test F1", "test Evi P", "test Evi R",
                      "test Evi F1", "time/run", "s/step", "peak memory"]
    assert lines[2].startswith("| dreeam | atlop | atl | docre | 1 | 50.00 | 60.00 | 50.00 | 25.00 | 50.00 | 33.33 |")
    assert lines[3].startswith("| atlop | atlop | atl | docre | 1 | 50.00 | 60.00 | 40.00 | – | – | – |")
    assert lines[4].startswith("| kd | atlop | atl | docre | 1 | 50.00 | 60.00 | 50.00 | – | – | – |")  # zeros of no evidence
    # a model that predicts no evidence (0 predicted) adds no columns
    evidence["num_evidence_predicted"] = 0
    rows = summarize({"dreeam": [fake_run(tmp_path / "again-s1", 1, 0.6, evidence)]})
    assert "Evi" not in markdown_table(rows)


def test_rows_name_model_and_loss_and_failed_runs_are_not_unfinished(tmp_path):
    runs = [fake_run(tmp_path / f"dreeam_atgl-s{s}", s, 0.6 if s == 1 else None) for s in (1, 2, 3)]
    for run in runs:
        (run / "config.yaml").write_text(f"seed: {run.name[-1]}\nmodel:\n  name: dreeam\nloss:\n  name: atgl\n  alpha: 16.5\n")
    (runs[1] / "failed.json").write_text(json.dumps({"error": "docs.json: document 2 ('X'): missing field 'labels'"}))
    (runs[2] / "failed.json").write_text("{torn")  # a crash while it was written: still a failure
    (runs[0] / "failed.json").write_text(json.dumps({"error": "old"}))  # finished after all: results.json wins
    row, = summarize({"dreeam_atgl": runs}, expected={"dreeam_atgl": 4})
    assert (row["model"], row["loss"]) == ("dreeam", "atgl (alpha=16.5)")
    assert row["failed"] == {str(runs[1]): "docs.json: document 2 ('X'): missing field 'labels'",
                             str(runs[2]): "failed (failed.json is unreadable)"}
    assert row["n"] == 1 and row["unfinished"] == []
    lines = markdown_table([row]).splitlines()
    assert lines[2].startswith("| dreeam_atgl | dreeam | atgl (alpha=16.5) | docre | 1/4 | ")
    assert ("Failed (2; their failed.json): dreeam_atgl-s2: docs.json: document 2 ('X'): missing field 'labels'; "
            "dreeam_atgl-s3: failed (failed.json is unreadable).") in lines
    assert not any(line.startswith("Not finished yet") for line in lines)


def test_train_records_why_a_run_failed_and_a_new_start_clears_it(tiny_backbone, tmp_path, monkeypatch):
    import docre.trainer as trainer
    from docre.config import load_config
    from docre.trainer import Interrupted, train

    def config(*extra):
        return load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={tiny_backbone}", f"output_dir={tmp_path}",
                                                         "run_name=r-s66", "train.max_steps=1", *extra])

    run_dir = tmp_path / "r-s66"
    with pytest.raises(DocreError) as error:  # bad data, found after the run directory was made
        train(config("data.dev_file=nosuch.json"))
    assert json.loads((run_dir / "failed.json").read_text()) == {"error": str(error.value)}
    row, = summarize({"r": [run_dir]})
    assert row["failed"] == {str(run_dir): str(error.value)} and row["unfinished"] == []

    def crash(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    monkeypatch.setattr(trainer, "fit", crash)  # a crash (a bug, the device): its type says what it was
    with pytest.raises(RuntimeError):
        train(config())
    assert json.loads((run_dir / "failed.json").read_text()) == {
        "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}

    def stop(*args):
        raise Interrupted("interrupted by SIGINT after step 0", 2)

    monkeypatch.setattr(trainer, "fit", stop)  # a stop signal is no failure: the run resumes later
    with pytest.raises(Interrupted):
        train(config())
    assert not (run_dir / "failed.json").exists()
    monkeypatch.undo()

    assert train(config())["test"] and not (run_dir / "failed.json").exists()
    with pytest.raises(DocreError, match="already finished"):  # a refused start leaves the run it refused alone
        train(config())
    assert not (run_dir / "failed.json").exists()


def test_collect_takes_order_and_published_numbers_from_grid_json(tmp_path):
    table = tmp_path / "runs" / "t"
    for name in ("z-s1", "z-s2", "a-s1"):
        fake_run(table / name, int(name[-1]), 0.5)
    (table / "grid.json").write_text(json.dumps({"title": "T", "source": "S", "seeds": [1, 2, 3],
                                                 "rows": [{"name": "z", "published": {"test_f1": 70.0}}, {"name": "a"}]}))
    found = collect(tmp_path / "runs")  # the parent folder: one table below it
    assert list(found["groups"]) == ["z", "a"] and found["expected"] == {"z": 3, "a": 3}
    assert found["published"]["z"] == {"test_f1": 70.0} and (found["title"], found["source"]) == ("T", "S")
    assert collect(table / "z-s1")["groups"] == {"z": [table / "z-s1"]}  # a single run directory
    (table / "grid.json").write_text("{")  # e.g. cut short by a full disk: one line naming it, no traceback
    with pytest.raises(DocreError, match=rf"^{re.escape(str(table / 'grid.json'))}: not valid JSON \(Expecting property name"):
        collect(tmp_path / "runs")
    for shape in ([1], {"rows": [{"published": {}}]}, {"rows": ["z"]}):  # valid JSON, edited by hand into another shape
        (table / "grid.json").write_text(json.dumps(shape))
        with pytest.raises(DocreError, match=r"grid\.json: expected an object whose rows each have a name"):
            collect(tmp_path / "runs")


def test_summarize_runs_cli(tmp_path, capsys):
    fake_run(tmp_path / "runs" / "x-s1", 1, 0.5)
    assert run_main("summarize_runs", [str(tmp_path / "runs"), "-o", str(tmp_path / "o")]) == 0
    assert "| x | atlop | atl | docre | 1 | 50.00 | 50.00 |" in capsys.readouterr().out
    assert (tmp_path / "o" / "table.json").is_file()
    with pytest.raises(DocreError, match=r"--table nope: no such table \(configs/tables/NAME.yaml or a table file\)"):
        run_main("summarize_runs", [str(tmp_path / "runs"), "--table", "nope"])
    with pytest.raises(DocreError, match="no run directories"):
        run_main("summarize_runs", [str(tmp_path / "o")])
    missing = subprocess.run([sys.executable, "scripts/summarize_runs.py", str(tmp_path / "none")],
                             cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.strip() == f"error: {tmp_path / 'none'}: not a directory"


def test_summarize_runs_cli_with_a_table_file_counts_its_seeds(tmp_path, capsys):
    # --table FILE: the table's seeds are the runs each row asks for, shown n/expected as grid.json's are
    for seed in (1, 2):
        fake_run(tmp_path / "runs" / f"good-s{seed}", seed, 0.5)
    table = tmp_path / "table.yaml"
    table.write_text("title: T\nseeds: [1, 2, 3]\nrows:\n  - name: good\n    config: configs/smoke.yaml\n")
    assert run_main("summarize_runs", [str(tmp_path / "runs"), "--table", str(table)]) == 0
    assert "| good | atlop | atl | docre | 2/3 | 50.00 ± 0.00 | " in capsys.readouterr().out


def test_damaged_results_are_refused_with_what_to_do(tmp_path):
    runs = [fake_run(tmp_path / "runs" / f"x-s{seed}", seed, 0.5) for seed in (1, 2)]
    hint = "; delete the run (or its results.json) to train it again"
    (runs[1] / "results.json").write_text('{"dev": {"f1"')  # cut short, e.g. by a full disk
    path = re.escape(str(runs[1] / "results.json"))
    with pytest.raises(DocreError, match=rf"^{path}: not valid JSON \(.*\){re.escape(hint)}$"):
        run_main("summarize_runs", [str(tmp_path / "runs")])
    # valid JSON without scores: refused too, rather than blanking the good seed's means in its row
    (runs[1] / "results.json").write_text("{}")
    with pytest.raises(DocreError, match=rf"^{path}: no dev or test scores{re.escape(hint)}$"):
        run_main("summarize_runs", [str(tmp_path / "runs")])


def test_plot_runs_cli(tmp_path, capsys):
    run = fake_run(tmp_path / "runs" / "x-s1", 1, 0.5, {"f1": 0.4})
    write_metrics(run, [{"type": "eval", "split": "dev", "step": 1, "epoch": 1, "f1": 0.5}])
    assert run_main("plot_runs", [str(tmp_path / "runs"), "--table", "redocred_mini"]) == 0
    assert capsys.readouterr().out.startswith("written: ")
    assert (tmp_path / "runs" / "curves.png").is_file() and (tmp_path / "runs" / "bars.png").is_file()
    fake_run(tmp_path / "runs" / "y-s1", 1, 0.5, {"f1": 0.4})  # a run without metrics.jsonl is named, not left out unsaid
    assert run_main("plot_runs", [str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.startswith("no learning curve (no metrics.jsonl): y-s1\nwritten: ")


def write_metrics(run_dir: Path, rows: list[dict], torn: bool = False) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (run_dir / "metrics.jsonl").write_text(text + ('{"type": "tr' if torn else ""))


def test_epoch_curves_by_hand(tmp_path):
    # 4 steps per epoch, a loss row every 2 steps, dev every 2 steps (so at half epochs too)
    rows = []
    for step in range(2, 13, 2):
        rows.append({"type": "train", "step": step, "epoch": step / 4, "loss": float(step)})
        rows.append({"type": "eval", "split": "dev", "step": step, "epoch": step // 4, "f1": step / 100})
    write_metrics(tmp_path / "r", rows, torn=True)
    curves = epoch_curves(tmp_path / "r")
    assert curves["dev_f1"] == ([0.5, 1.0, 1.5, 2.0, 2.5, 3.0], [2.0, 4.0, 6.0, 8.0, 10.0, 12.0])
    assert curves["loss"] == ([1.0, 2.0, 3.0], [3.0, 7.0, 11.0])  # windows ending at steps (2, 4), (6, 8), (10, 12)


def test_mean_band_by_hand():
    xs, means, stds = mean_band([([1.0, 2.0], [10.0, 20.0]), ([1.0, 2.0, 3.0], [12.0, 24.0, 30.0])])
    assert xs == [1.0, 2.0, 3.0] and means == [11.0, 22.0, 30.0]
    assert stds == pytest.approx([math.sqrt(2.0), math.sqrt(8.0), 0.0])


def test_plots_are_png_files(tmp_path):
    runs = []
    for seed in (1, 2):
        run = fake_run(tmp_path / f"a-s{seed}", seed, 0.5, {"f1": 0.4, "ign_f1": 0.3})
        write_metrics(run, [{"type": "train", "step": 1, "epoch": 1.0, "loss": 2.0 + seed},
                            {"type": "eval", "split": "dev", "step": 1, "epoch": 1, "f1": 0.1 * seed}])
        runs.append(run)
    groups = {"a": runs}
    curves = plot_curves(groups, tmp_path / "plots" / "curves.png", "title")
    bars = plot_bars(summarize(groups, {"a": {"test_f1": 45.0}}), tmp_path / "plots" / "bars.png")
    for path in (curves, bars):
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["bars.png", "curves.png"]  # no temporary files left


def test_an_alpha_chosen_on_dev_is_shown_with_its_value(tmp_path):
    runs = [fake_run(tmp_path / f"atgl-s{s}", s, 0.6, alpha=a) for s, a in ((1, 4.125), (2, 8.25))]
    runs.append(fake_run(tmp_path / "atgl-s3", 3, None))  # its sweep still running: no choice yet
    for run in runs:
        (run / "config.yaml").write_text(f"seed: {run.name[-1]}\nloss:\n  name: atgl\n  alpha: auto\n")
    row, = summarize({"atgl": runs})
    assert row["loss"] == "atgl (alpha=auto: 4.125) / atgl (alpha=auto: 8.25) / atgl (alpha=auto)"
