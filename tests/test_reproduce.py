"""scripts/reproduce.py end to end on the tiny model: a table of the smoke config over 2 seeds is
interrupted by SIGTERM, resumed by the same command, tabulated and plotted; a finished grid is not
trained again; summarize_runs.py rebuilds the same table. A table with alpha_seed sweeps alpha on that
seed and trains the other seeds with its choice. Also the train.py command of each state."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from docre.config import load_config
from docre.errors import DocreError
from docre.grid import train_command
from docre.tables import Row, Table, plan_runs
from tests.cli import fake_training, load_script, run_main

ROOT = Path(__file__).resolve().parent.parent


def test_train_command_per_state(tmp_path, tiny_backbone):
    reproduce = load_script("reproduce")
    table = Table(name="t", rows=[Row("a", "configs/smoke.yaml", [f"model.backbone={tiny_backbone}"])])
    run = plan_runs(table, [5], tmp_path / "t")[0]
    train = [sys.executable, "-m", "docre.cli.train"]
    assert train_command(run, 1) == [*train, str(ROOT / "configs/smoke.yaml"), *run.overrides]
    assert run.overrides[-3:] == ["seed=5", "run_name=a-s5", f"output_dir={tmp_path.resolve() / 't'}"]
    run.state = "stale"
    assert train_command(run, 1)[-1] == "train.overwrite=true"
    run.state = "resumable"
    assert train_command(run, 1) == [*train, "--resume", str(run.run_dir)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert train_command(run, 2) == [*launcher, "-m", "docre.cli.train", "--resume", str(run.run_dir)]
    assert reproduce.parse_seeds("66, 67,68") == [66, 67, 68]
    for bad, message in [("66,x", "expected comma-separated integers"), ("66,66", "expected distinct seeds"),
                         ("", "expected distinct seeds")]:
        with pytest.raises(DocreError, match=rf"^--seeds '{bad}': {message}, e\.g\. 66,67,68$"):
            reproduce.parse_seeds(bad)


def reproduce(*args, **kwargs):
    return subprocess.run([sys.executable, "scripts/reproduce.py", *args], cwd=ROOT, capture_output=True, text=True, **kwargs)


@pytest.mark.slow  # three training processes of the tiny model (about 30 s on 2 idle cores)
def test_interrupted_grid_resumes_and_is_tabulated(tmp_path, tiny_backbone, capsys):
    table = tmp_path / "smoke_grid.yaml"
    table.write_text(
        "title: Smoke grid\nsource: invented numbers\nseeds: [1, 2]\n"
        f"overrides: [model.backbone={tiny_backbone}, train.epochs=6, train.eval_every=3, train.save_every=1, "
        "train.log_every=1]\n"
        "rows:\n  - {name: atgl, config: configs/smoke.yaml, published: {test_f1: 40.0, note: invented}}\n"
    )
    out = tmp_path / "runs"
    grid = out / "smoke_grid"
    first, second = grid / "atgl-s1", grid / "atgl-s2"

    # 1. SIGTERM to the runner once the first run has a checkpoint: it stops there, resumable
    runner = subprocess.Popen([sys.executable, "scripts/reproduce.py", str(table), "--output-dir", str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (first / "last" / "state.json").is_file() and runner.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    runner.send_signal(signal.SIGTERM)
    _, stderr = runner.communicate(timeout=180)
    assert runner.returncode == 1, stderr[-3000:]
    assert "error: interrupted during atgl-s1" in stderr and "Traceback" not in stderr.split("error: interrupted")[-1]
    assert (first / "last").is_dir() and not (first / "results.json").exists() and not second.exists()
    states = {run.cfg.run_name: run.state for run in plan_runs(_table(table), [1, 2], grid)}
    assert states == {"atgl-s1": "resumable", "atgl-s2": "missing"}

    # 2. the same command resumes the first run, runs the second and writes the table and plots
    result = reproduce(str(table), "--output-dir", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "atgl-s1: resume" in result.stdout and "atgl-s2: start" in result.stdout
    assert "resumed from" in (first / "train.log").read_text()
    steps = [json.loads(line)["step"] for line in (first / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "train"]
    assert steps == list(range(1, 7))  # every step logged once across the interruption
    results = [json.loads((run / "results.json").read_text()) for run in (first, second)]
    assert all(r["wall_seconds"] >= r["train_seconds"] > 0 for r in results)
    environment = json.loads((first / "environment.json").read_text())
    assert {"torch", "transformers", "numpy", "cpu_threads", "git_commit", "git_dirty", "device", "command"} <= environment.keys()
    assert len(environment["earlier"]) == 1  # the interrupted process's record is kept
    saved = json.loads((grid / "table.json").read_text())
    row = saved["rows"][0]
    assert row["n"] == 2 and row["seeds"] == [1, 2]
    assert row["test"]["f1"]["mean"] == pytest.approx(sum(r["test"]["f1"] for r in results) / 2)
    assert row["published"] == {"test_f1": 40.0, "note": "invented"}
    table_md = (grid / "table.md").read_text()
    assert table_md in result.stdout and "| atgl | atlop | atgl (alpha=16.5) | docre | 2/2 |" in table_md
    assert "|  |  |  | paper |" in table_md
    for png in ("curves.png", "bars.png"):
        assert (grid / png).read_bytes()[:4] == b"\x89PNG"

    # 3. a finished grid trains nothing: both runs plan as done (and the runner only trains the rest)
    assert {run.state for run in plan_runs(_table(table), [1, 2], grid)} == {"finished"}

    # 4. summarize_runs.py gives the same table from the directories alone
    assert run_main("summarize_runs", [str(grid)]) == 0
    assert capsys.readouterr().out.strip() == table_md.strip()


def _table(path: Path) -> Table:
    from docre.tables import load_table

    return load_table(path)


def alpha_seed_table(tmp_path: Path, backbone: str) -> Path:
    table = tmp_path / "alpha_grid.yaml"
    table.write_text(
        "seeds: [1, 2]\nalpha_seed: 1\n"
        f"overrides: [model.backbone={backbone}, train.epochs=2, loss.alpha=auto, 'sweep.alpha_grid=[0.5, 1]']\n"
        "rows:\n  - {name: atgl, config: configs/smoke.yaml}\n"
    )
    return table


@pytest.mark.slow  # three training processes of the tiny model
def test_alpha_seed_sweeps_once_and_the_other_seeds_reuse_its_alpha(tmp_path, tiny_backbone):
    table, out = alpha_seed_table(tmp_path, tiny_backbone), tmp_path / "runs"
    planned = reproduce(str(table), "--dry-run", "--output-dir", str(out))
    assert "atgl-s2" in planned.stdout and "waiting (for the alpha that seed 1's sweep chooses)" in planned.stdout
    assert "1 missing, 1 waiting. Nothing was run" in planned.stdout
    result = reproduce(str(table), "--output-dir", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep, reuse = out / "alpha_grid" / "atgl-s1", out / "alpha_grid" / "atgl-s2"
    chosen = json.loads((sweep / "results.json").read_text())
    assert sorted(row["alpha"] for row in chosen["alpha_sweep"]) == [8.25, 16.5]
    assert load_config(reuse / "config.yaml").loss == {"name": "atgl", "alpha": chosen["alpha"]}
    assert not (reuse / "alpha_sweep").exists() and (reuse / "results.json").is_file()
    assert [row["n"] for row in json.loads((out / "alpha_grid" / "table.json").read_text())["rows"]] == [2]
    # the loss comparison of the grid names the sweep's loss by the alpha it chose, as the reusing seed's
    assert run_main("compare_losses", ["--runs", str(out / "alpha_grid"), "--output-dir", str(tmp_path / "cmp")]) == 0
    compared = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [row["label"] for row in compared["runs"]] == [f"atgl(alpha={chosen['alpha']})"] * 2
    assert compared["summary"][0]["seeds"] == [1, 2]


def test_a_failed_alpha_seed_sweep_leaves_its_other_seeds_waiting(tmp_path):
    result = reproduce(str(alpha_seed_table(tmp_path, str(tmp_path / "no_backbone"))), "--output-dir", str(tmp_path / "runs"),
                       timeout=300)
    assert result.returncode == 1
    assert result.stdout.count("atgl-s1: start") == 1  # tried once, not again in the second pass
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 1 of 2 runs failed: atgl-s1 (see their train.log; the same command retries them); "
        "1 run waiting for the alpha seed's sweep: atgl-s2")


def test_runner_errors(tmp_path, capsys):
    unknown = reproduce("no_such_table", "--dry-run")  # through the real CLI wrapper: one line, status 1
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: no_such_table: neither a table name (")
    assert len(unknown.stderr.strip().splitlines()) == 1
    with pytest.raises(DocreError) as error:
        run_main("reproduce", ["redocred_mini", "--dry-run", "train.epoch=2"])
    assert str(error.value) == "override 'train.epoch=2': unknown key 'train.epoch' (did you mean train.epochs?)"
    with pytest.raises(DocreError, match="--seeds '5,x': expected comma-separated integers"):
        run_main("reproduce", ["redocred_mini", "--dry-run", "--seeds", "5,x"])
    same_name = tmp_path / "copy" / "minilm_atl.yaml"
    same_name.parent.mkdir()
    same_name.write_text((ROOT / "configs/redocred_mini/minilm_atl.yaml").read_text())
    with pytest.raises(DocreError, match="two configs are named 'minilm_atl'"):
        run_main("reproduce", [str(ROOT / "configs/redocred_mini/minilm_atl.yaml"), str(same_name), "--dry-run"])
    args = ["redocred_mini", "--dry-run", "--seeds", "5", "train.epochs=1", "--output-dir", str(tmp_path)]
    assert run_main("reproduce", args) == 0
    out = capsys.readouterr().out
    assert "minilm_atl-s5" in out and "minilm_atgl-s5" in out and "2 missing. Nothing was run" in out
    assert not (tmp_path / "redocred_mini").exists()  # a dry run writes nothing
    config = str(ROOT / "configs/redocred_mini/minilm_atl.yaml")
    assert run_main("reproduce", [config, "--dry-run", "--name", "mine", "--output-dir", str(tmp_path)]) == 0
    assert f"mine: 1 row x 1 seed = 1 run in {tmp_path.resolve() / 'mine'}" in capsys.readouterr().out
    for argv, message in [(["train.epochs=2", "--dry-run"], "name a table or at least one config file"),
                          (["redocred_mini", "--dry-run", "--jobs", "0"], "--nproc and --jobs must be at least 1"),
                          (["redocred_mini", "--dry-run", "--nproc", "0"], "--nproc and --jobs must be at least 1")]:
        with pytest.raises(SystemExit) as exit_:
            run_main("reproduce", argv)
        assert exit_.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == f"reproduce.py: error: {message}"


def test_a_run_stopped_by_a_signal_stops_the_grid(monkeypatch, tmp_path):
    # a crashes (exit 1: failed, the grid goes on); b's own training process gets SIGTERM (kill PID, a
    # preemption) and exits 143 with a checkpoint: the grid stops there and c is never started
    import docre.grid as grid

    statuses = {"a": 1, "b": 128 + signal.SIGTERM, "c": 0}
    started = fake_training(monkeypatch, statuses.get)
    runs = [SimpleNamespace(cfg=SimpleNamespace(run_name=name), state="missing", run_dir=tmp_path / name,
                            row=SimpleNamespace(name="r")) for name in "abc"]
    with pytest.raises(DocreError, match=r"^b was stopped by SIGTERM \(exit status 143\) with a checkpoint, so the "
                                         r"grid stops too; run the same command again to resume: "):
        grid.run_grid(runs)
    assert started == ["a", "b"]
    statuses["b"] = 128 + signal.SIGKILL  # killed without a checkpoint (the OOM killer): a failed run
    started.clear()
    assert [run.cfg.run_name for run in grid.run_grid(runs)] == ["a", "b"] and started == ["a", "b", "c"]


def test_rows_trains_only_the_named_rows_and_tabulates_all(tmp_path, monkeypatch, capsys):
    import docre.grid

    calls = []  # the runs of each run_grid call: one call is one queue
    monkeypatch.setattr(docre.grid, "run_grid", lambda runs, nproc, jobs: calls.append([run.cfg.run_name for run in runs]) or [])
    args = ["models_redocred_mini", "--rows", "ttm_re_ssr_pu,vaediff_pemscl", "--seeds", "66,67", "--output-dir", str(tmp_path)]
    assert run_main("reproduce", [*args, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "2 rows x 2 seeds = 4 runs" in listed and "ttm_re_ssr_pu-s67" in listed and "dreeam_atl" not in listed
    assert "4 missing. Nothing was run" in listed
    assert run_main("reproduce", args) == 0
    assert calls == [["ttm_re_ssr_pu-s66", "ttm_re_ssr_pu-s67", "vaediff_pemscl-s66", "vaediff_pemscl-s67"]]
    table = json.loads((tmp_path / "models_redocred_mini" / "table.json").read_text())
    assert len(table["rows"]) == 10  # every row of the table, none finished
    # a second command on the same folder, split by seed (another machine): grid.json keeps both's seeds
    assert run_main("reproduce", [*args[:3], "--seeds", "68,66", *args[5:]]) == 0
    assert json.loads((tmp_path / "models_redocred_mini" / "grid.json").read_text())["seeds"] == [66, 67, 68]
    with pytest.raises(DocreError, match=r"^--rows: table models_redocred_mini has no row 'ttm_re_sspu' "
                                         r"\(did you mean ttm_re_ssr_pu\?\); its rows: dreeam_atl, "):
        run_main("reproduce", ["models_redocred_mini", "--rows", "ttm_re_sspu", "--dry-run"])
    with pytest.raises(DocreError, match=r"^--rows: give comma-separated row names, e\.g\. --rows dreeam_atl,"):
        run_main("reproduce", ["models_redocred_mini", "--rows", " , ", "--dry-run"])
    # an ATGL row: its alpha seed's sweep first, its other seeds wait for it (the fake grid finishes nothing)
    calls.clear()
    with pytest.raises(DocreError, match=r"^1 run waiting for the alpha seed's sweep: ttm_re_atgl-s67$"):
        run_main("reproduce", [*args[:2], "ttm_re_ssr_pu,ttm_re_atgl", *args[3:]])
    # the sweep first, in one queue with the runs that need no alpha (both cores busy under --jobs 2);
    # the sweep left unfinished (a failed run) is not started again by the same command
    assert calls[0] == ["ttm_re_atgl-s66", "ttm_re_ssr_pu-s66", "ttm_re_ssr_pu-s67"] and not any(calls[1:])


def test_a_grid_split_by_seed_tabulates_every_seed_and_never_mixes_settings(tmp_path, tiny_backbone, capsys):
    out = tmp_path / "runs"
    common = ["configs/smoke.yaml", "--name", "g", "--output-dir", str(out), f"model.backbone={tiny_backbone}",
              "train.max_steps=2", "data.cache_dir=none"]
    assert run_main("reproduce", [*common, "--seeds", "1,2"]) == 0
    assert run_main("reproduce", [*common, "--seeds", "3"]) == 0  # another machine's share of the same grid
    table = json.loads((out / "g" / "table.json").read_text())
    assert [row["n"] for row in table["rows"]] == [3]  # was 1: the last command's seeds alone
    # a new seed with another setting would be averaged into the row: refused before anything trains
    with pytest.raises(DocreError, match=r"g/smoke-s1: holds a run of another config \(train\.max_steps: 2 -> 3\)"):
        run_main("reproduce", [*common, "--seeds", "4", "train.max_steps=3"])
    assert not (out / "g" / "smoke-s4").exists()
    # the same runs in another folder (copied to another machine) are the same runs
    moved = tmp_path / "moved"
    moved.mkdir()
    (out / "g").rename(moved / "g")
    capsys.readouterr()
    assert run_main("reproduce", [*common[:3], "--output-dir", str(moved), *common[5:], "--seeds", "1,2,3", "--dry-run"]) == 0
    assert "3 finished. Nothing was run" in capsys.readouterr().out
