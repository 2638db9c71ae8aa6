"""docre.run_dir: the states a run directory can be in, the one skip / resume / start-again plan
that grids and the alpha sweep follow, the saved-vs-requested config check, and loading a run's
loss with its decode.json applied; a checkpoint without its step, a saved config that does not load,
and a run directory without config.yaml or metrics.jsonl; the lock that keeps a second process out
of a run being trained."""

import contextlib
import json
import os
import subprocess
import sys

import pytest

from docre import run_dir as runs
from docre.config import load_config, save_config
from docre.errors import DocreError
from docre.utils import hold_lock
from tests.conftest import ROOT, yaml_wording


def smoke(tmp_path, *overrides):
    return load_config(ROOT / "configs/smoke.yaml", [f"output_dir={tmp_path}", "run_name=r", "model.backbone=x", *overrides])


def make_checkpoint(run_dir, step: int) -> None:
    (run_dir / "last").mkdir(parents=True)
    (run_dir / "last" / "state.json").write_text(json.dumps({"counters": {"step": step}}))
    for name in ("model.safetensors", "optimizer.safetensors"):
        (run_dir / "last" / name).write_bytes(b"")


def test_each_state_plans_its_action_and_config(tmp_path):
    cfg = smoke(tmp_path)
    run_dir = runs.path_of(cfg)
    assert run_dir == tmp_path / "r"
    action, planned = runs.plan(run_dir, cfg)
    assert (runs.state_of(run_dir).kind, action, planned.train.resume, planned.train.overwrite) == ("missing", "start", "", False)
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    action, planned = runs.plan(run_dir, cfg)
    assert (runs.state_of(run_dir).kind, action, planned.train.overwrite) == ("stale", "start again", True)
    make_checkpoint(run_dir, 7)
    state = runs.state_of(run_dir)
    assert (state.kind, state.detail, state.checkpoint) == ("resumable", "checkpoint at step 7", run_dir / "last")
    action, planned = runs.plan(run_dir, cfg)
    assert (action, planned.train.resume, planned.train.overwrite) == ("resume", str(run_dir), False)
    assert cfg.train.resume == ""  # the requested config itself is left alone
    (run_dir / "results.json").write_text("{}")
    assert runs.state_of(run_dir).kind == "finished" and runs.plan(run_dir, cfg)[0] == "skip"
    assert runs.read_results(run_dir) == {}


def test_a_run_made_of_runs_resumes_from_what_its_parts_kept(tmp_path):
    """An alpha sweep over VaeDiff-DocRE keeps no checkpoint of its own, only its parts do: once one part has
    kept anything the parent is resumable (a grid passes --resume, and the parent skips or resumes each part),
    not "start again", which told a user that hours of finished stages were to be thrown away."""
    cfg = smoke(tmp_path, "loss.alpha=auto")
    run_dir = runs.path_of(cfg)
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    value = run_dir / "alpha_sweep" / "alpha=4.125"
    (value / "stage1").mkdir(parents=True)
    (value / "stage1" / "train.log").write_text("")  # a part that kept nothing
    assert runs.state_of(run_dir).kind == "stale"
    (value / "stage1" / "results.json").write_text("{}")
    make_checkpoint(value / "stage2", 0)
    (value / "stage2" / "last" / "state.json").write_text(json.dumps({"counters": {"epoch": 63}}))
    make_checkpoint(run_dir / "alpha_sweep" / "alpha=8.25", 144)
    state = runs.state_of(run_dir)
    assert (state.kind, state.detail, state.checkpoint) == (
        "resumable", "kept: alpha=4.125/stage1 finished, alpha=4.125/stage2 checkpoint after epoch 63, "
                     "alpha=8.25 checkpoint at step 144", None)
    action, planned = runs.plan(run_dir, cfg)
    assert (action, planned.train.resume, planned.train.overwrite) == ("resume", str(run_dir), False)
    (value / "stage2" / "augmenter.safetensors").write_bytes(b"")  # stage 2 finished
    assert runs.state_of(value).detail == "kept: stage1 finished, stage2 finished"
    with pytest.raises(DocreError, match="holds a run of another config"):  # resumable: never reused for another
        runs.plan(run_dir, smoke(tmp_path, "loss.alpha=auto", "seed=5"))


def test_a_run_of_another_config_is_refused_but_start_settings_are_not_compared(tmp_path):
    cfg = smoke(tmp_path)
    run_dir = runs.path_of(cfg)
    run_dir.mkdir()
    save_config(smoke(tmp_path, "train.resume=somewhere", "train.num_threads=1", "log.wandb=true"), run_dir / "config.yaml")
    (run_dir / "results.json").write_text("{}")
    assert runs.plan(run_dir, cfg)[0] == "skip"
    with pytest.raises(DocreError, match=r"r: holds a run of another config \(seed: 66 -> 5\)"):
        runs.plan(run_dir, smoke(tmp_path, "seed=5"))
    assert runs.config_differences(cfg, smoke(tmp_path, "loss.alpha=3")) == [
        "loss: {'name': 'atgl', 'alpha': 16.5} -> {'name': 'atgl', 'alpha': 3}"]
    # a stale directory of another config has nothing to lose: it starts again
    (run_dir / "results.json").unlink()
    assert runs.plan(run_dir, smoke(tmp_path, "seed=5"))[0] == "start again"


def test_resume_warns_only_about_settings_that_change_what_is_learnt(tmp_path):
    cfg = smoke(tmp_path)
    run_dir = runs.path_of(cfg)
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    assert runs.changed_settings(run_dir, smoke(tmp_path, "train.device=cpu", "eval.batch_size=1")) == []
    assert runs.changed_settings(run_dir, smoke(tmp_path, "train.head_lr=1e-3")) == ["train.head_lr: 0.0003 -> 0.001"]
    assert runs.changed_settings(tmp_path / "nothing", cfg) == []


def test_prepare_refuses_what_it_would_destroy(tmp_path):
    cfg = smoke(tmp_path)
    run_dir = runs.path_of(cfg)
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(DocreError, match="directory is not empty"):
        runs.prepare(run_dir, cfg, 0)
    make_checkpoint(run_dir, 3)
    with pytest.raises(DocreError, match=r"holds an unfinished run; resume it with docre-train --resume"):
        runs.prepare(run_dir, cfg, 0)
    assert runs.prepare(run_dir, smoke(tmp_path, f"train.resume={run_dir}"), 0) == run_dir / "last"
    (run_dir / "results.json").write_text("{}")
    with pytest.raises(DocreError, match="already finished"):
        runs.prepare(run_dir, cfg, 0)
    with pytest.raises(DocreError, match="nothing to resume"):
        runs.prepare(run_dir, smoke(tmp_path, f"train.resume={run_dir}"), 0)
    assert runs.prepare(run_dir, smoke(tmp_path, "train.overwrite=true"), 0) is None
    assert run_dir.is_dir() and not any(run_dir.iterdir())


def test_a_failed_start_does_not_block_the_next(tmp_path):
    cfg = smoke(tmp_path)
    run_dir = runs.path_of(cfg)
    run_dir.mkdir()
    for name in ("config.yaml", "environment.json", "train.log", "metrics.jsonl"):
        (run_dir / name).write_text("")
    (run_dir / ".best.safetensors.x.tmp").write_bytes(b"")  # a killed write
    assert runs.prepare(run_dir, cfg, 0) is None and not any(run_dir.iterdir())


def test_the_loss_of_a_run_has_its_decode_parameters(tmp_path):
    cfg = smoke(tmp_path, "loss.name=bce")
    run_dir = runs.path_of(cfg)
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    assert runs.load_config_and_loss(run_dir)[1].threshold == 0.5
    (run_dir / "decode.json").write_text('{"threshold": 0.25}')
    loaded, loss_fn, decode = runs.load_config_and_loss(run_dir)
    assert loss_fn.threshold == 0.25 and decode == {"threshold": 0.25} and loaded.loss == {"name": "bce"}
    (run_dir / "decode.json").write_text('{"threshold": ')
    with pytest.raises(DocreError, match=r"decode.json: not valid JSON"):
        runs.load_config_and_loss(run_dir)
    with pytest.raises(DocreError, match="not a run directory"):
        runs.load_config_and_loss(tmp_path / "nothing")


def test_model_kind(tmp_path):
    with pytest.raises(DocreError, match="model directory not found"):
        runs.model_kind(tmp_path / "nothing")
    with pytest.raises(DocreError, match="neither a run directory"):
        runs.model_kind(tmp_path)
    (tmp_path / "config.yaml").write_text("")
    (tmp_path / "best.safetensors").write_bytes(b"")
    assert runs.model_kind(tmp_path) == "run"
    (tmp_path / "encoder").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert runs.model_kind(tmp_path) == "export"


def test_a_checkpoint_without_its_step_counter_is_resumable(tmp_path):
    run_dir = tmp_path / "r"
    make_checkpoint(run_dir, 7)
    for state_json in ('{"counters": {}}', "{}", "[1]", "{not json"):  # the last two: damaged, not docre's
        (run_dir / "last" / "state.json").write_text(state_json)
        state = runs.state_of(run_dir)
        assert (state.kind, state.detail, state.checkpoint) == ("resumable", "checkpoint present", run_dir / "last")


def test_plan_starts_a_missing_run_afresh_whatever_the_caller_left_in_resume_and_overwrite(tmp_path):
    cfg = smoke(tmp_path, f"train.resume={tmp_path / 'elsewhere'}", "train.overwrite=true")
    action, planned = runs.plan(tmp_path / "r", cfg)
    assert (action, planned.train.resume, planned.train.overwrite) == ("start", "", False)


def test_a_saved_config_that_does_not_load_is_one_line(tmp_path):
    cfg = smoke(tmp_path)
    run_dir = runs.path_of(cfg)
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("loss: [unclosed\n")
    (run_dir / "results.json").write_text("{}")
    with pytest.raises(DocreError) as error:
        runs.plan(run_dir, cfg)
    assert yaml_wording(str(error.value)) == (f"{run_dir}: its config.yaml does not load ({run_dir}/config.yaml: "
                                              "not valid YAML at line 2 column 1: did not find expected ',' or ']'); "
                                              "move the run away")


def test_a_run_directory_without_config_or_metrics(tmp_path):
    cfg = smoke(tmp_path)
    run_dir = runs.path_of(cfg)
    make_checkpoint(run_dir, 4)  # a resumable run whose config.yaml is gone: nothing to compare, so no refusal
    assert runs.plan(run_dir, cfg)[0] == "resume"
    (run_dir / "results.json").write_text("{}")
    assert runs.plan(run_dir, cfg)[0] == "skip"
    runs.truncate_metrics(run_dir, 4)  # no metrics.jsonl: nothing to truncate, and none is made
    assert not (run_dir / "metrics.jsonl").exists()
    rows = [json.dumps({"step": step}) for step in (2, 4, 6)] + ['{"step": 8, "lo']  # the last cut short by a kill
    (run_dir / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    runs.truncate_metrics(run_dir, 4)
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 2}\n{"step": 4}\n'
    # a checkpoint saved before its step's dev evaluation (dev_pending): a dev row of that step was written after it
    rows = [{"type": "train", "step": 4}, {"type": "eval", "step": 4}, {"type": "eval", "step": 2}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    runs.truncate_metrics(run_dir, 4, drop_dev_at_step=True)
    assert [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [rows[0], rows[2]]


@contextlib.contextmanager
def held_by_another_process(run_dir):
    """A subprocess holds RUN_DIR's lock for the with-block; yields its pid. SIGKILLed at the end: no
    clean-up runs, and still no lock is left behind."""
    code = ("import sys, time\nfrom pathlib import Path\nfrom docre.utils import hold_lock\n"
            "with hold_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_second_process_training_the_same_run_stops_before_touching_it(tmp_path, tiny_backbone):
    from docre.trainer import train

    run_dir = tmp_path / "r"
    make_checkpoint(run_dir, 3)  # the other process's run so far
    (run_dir / "metrics.jsonl").write_text('{"step": 3}\n')
    with held_by_another_process(run_dir) as pid:
        before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
        # overwrite=true would empty the directory: the lock is taken before that
        cfg = smoke(tmp_path, f"model.backbone={tiny_backbone}", "train.overwrite=true")
        with pytest.raises(DocreError, match=rf"r: another process \(pid {pid}\) is training this run; let it finish"):
            train(cfg)
        with pytest.raises(DocreError, match="another process"):
            train(smoke(tmp_path, f"model.backbone={tiny_backbone}", f"train.resume={run_dir}"))
        assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
        assert (run_dir / "metrics.jsonl").read_text() == '{"step": 3}\n'
    with hold_lock(run_dir):  # the killed holder left the lock free
        assert (run_dir / runs.LOCK).read_text() == f"{os.getpid()}\n"
        # an flock belongs to the open file: a second hold in this process is refused too
        with pytest.raises(DocreError, match="another process"), hold_lock(run_dir):
            pass
    with hold_lock(run_dir):  # released at the end of the with-block
        pass


@pytest.mark.parametrize("kind", ["alpha sweep", "VaeDiff-DocRE run"])
def test_a_run_made_of_runs_is_locked_as_a_whole(tmp_path, kind):
    """The alpha sweep and VaeDiff-DocRE's stages hold their parent directory's lock while their runs
    train, so a second command over the same folder neither empties it (overwrite) nor fits VaeDiff's
    stage 2, which no train() locks, a second time."""
    from docre.sweep import run

    extra = (["loss.alpha=auto", "sweep.alpha_base=1"] if kind == "alpha sweep"
             else ["model.name=vaediff", "loss={name: vaediff}"])
    run_dir = tmp_path / "r"
    (run_dir / "stage2").mkdir(parents=True)
    (run_dir / "stage2" / "features.safetensors").write_bytes(b"x")
    (run_dir / "config.yaml").write_text("an earlier config\n")  # another config: overwrite=true would empty the folder
    with held_by_another_process(run_dir) as pid:
        before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
        with pytest.raises(DocreError, match=rf"r: another process \(pid {pid}\) is training this run"):
            run(smoke(tmp_path, "train.overwrite=true", *extra))
        assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    assert (run_dir / "stage2" / "features.safetensors").read_bytes() == b"x"


def test_the_lock_file_alone_is_not_a_run(tmp_path):
    cfg = smoke(tmp_path)
    run_dir = runs.path_of(cfg)
    with hold_lock(run_dir):
        assert runs.state_of(run_dir).kind == "missing"
        assert runs.prepare(run_dir, cfg, 0) is None  # a fresh start in a directory that holds only the lock
        for name in ("config.yaml", "train.log"):
            (run_dir / name).write_text("")
        assert runs.state_of(run_dir).kind == "stale"
        assert runs.prepare(run_dir, smoke(tmp_path, "train.overwrite=true"), 0) is None
        assert [p.name for p in run_dir.iterdir()] == [runs.LOCK]  # emptied around the lock it holds


def test_a_run_made_of_runs_follows_the_plain_run_rules(tmp_path):
    """sweep.prepare_parent (alpha sweeps, VaeDiff-DocRE): a failed start that kept nothing is replaced by the
    corrected command (it blocked it); kept work of another config is refused, naming the difference also when the
    run finished; train.init_from naming the run itself is refused before train.overwrite empties it; --resume of a
    finished run is refused."""
    from docre.sweep import prepare_parent

    cfg = smoke(tmp_path, "loss.alpha=auto", "train.init_from=/nowhere")
    run_dir = runs.path_of(cfg)
    prepare_parent(run_dir, cfg, 0)
    (run_dir / "alpha_sweep" / "alpha=4.125").mkdir(parents=True)
    for name in ("config.yaml", "train.log", "failed.json", ".best.json.tmp"):  # the failed start of its first value
        (run_dir / "alpha_sweep" / "alpha=4.125" / name).write_text("")
    (run_dir / "alpha_sweep" / "alpha=4.125" / "last.tmp").mkdir()  # killed while its first checkpoint was staged
    (run_dir / "alpha_sweep" / "alpha=4.125" / "last.tmp" / "model.safetensors").write_text("")
    fixed = smoke(tmp_path, "loss.alpha=auto")
    prepare_parent(run_dir, fixed, 0)  # replaced: nothing was kept
    assert [p.name for p in run_dir.iterdir()] == ["config.yaml"] and runs.config_differences(
        load_config(run_dir / "config.yaml"), fixed) == []

    (run_dir / "alpha_sweep" / "alpha=4.125").mkdir(parents=True)
    (run_dir / "alpha_sweep" / "alpha=4.125" / "results.json").write_text("{}")  # kept work
    with pytest.raises(DocreError, match=r"r: holds an unfinished alpha sweep of another config \(seed: 66 -> 5\)"):
        prepare_parent(run_dir, smoke(tmp_path, "loss.alpha=auto", "seed=5"), 0)
    (run_dir / "results.json").write_text("{}")
    with pytest.raises(DocreError, match=r"r: holds a finished alpha sweep of another config \(seed: 66 -> 5\)"):
        prepare_parent(run_dir, smoke(tmp_path, "loss.alpha=auto", "seed=5"), 0)
    with pytest.raises(DocreError, match="r: this alpha sweep already finished"):
        prepare_parent(run_dir, fixed, 0)
    with pytest.raises(DocreError, match=r"^.*r: this run already finished \(results.json\); there is nothing to resume$"):
        prepare_parent(run_dir, smoke(tmp_path, "loss.alpha=auto", f"train.resume={run_dir}"), 0)
    own = smoke(tmp_path, "loss.alpha=auto", "train.overwrite=true", f"train.init_from={run_dir}")
    with pytest.raises(DocreError, match=rf"^train.init_from={run_dir}: this run's own directory"):
        prepare_parent(run_dir, own, 0)
    assert (run_dir / "results.json").is_file() and (run_dir / "alpha_sweep" / "alpha=4.125" / "results.json").is_file()


def test_a_run_made_of_runs_resumed_with_other_settings_is_refused_before_its_config_changes(tmp_path):
    """Resumed with train.epochs=5, a sweep wrote 5 into its config.yaml, then its value's run (kept work, 30 epochs)
    refused the change: from then on every resume failed, the plain `--resume RUN` too."""
    from docre.sweep import prepare_parent, resumed_keys

    cfg = smoke(tmp_path, "loss.alpha=auto")
    run_dir = runs.path_of(cfg)
    prepare_parent(run_dir, cfg, 0)
    make_checkpoint(run_dir / "alpha_sweep" / "alpha=4.125", 3)
    saved = (run_dir / "config.yaml").read_text()
    resume = [f"train.resume={run_dir}"]
    with pytest.raises(DocreError, match=rf"^{run_dir}: resumed with other settings than the alpha sweep's \(train.epochs: "
                                         r"\d+ -> 5\); its runs go on with their own: resume without the overrides"):
        prepare_parent(run_dir, smoke(tmp_path, "loss.alpha=auto", "train.epochs=5", *resume), 0)
    assert (run_dir / "config.yaml").read_text() == saved
    moved = smoke(tmp_path, "loss.alpha=auto", "train.device=cpu", "eval.batch_size=2", *resume)  # where it runs: allowed
    prepare_parent(run_dir, moved, 0)
    assert resumed_keys(moved) == runs.RESUME_KEYS and resumed_keys(cfg) == runs.START_KEYS  # its parts' plans ignore
    assert runs.plan(run_dir / "alpha_sweep" / "alpha=4.125", smoke(tmp_path, "loss.alpha=auto", "train.device=cpu"),
                     resumed_keys(moved))[0] == "resume"
