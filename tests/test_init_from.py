"""train.init_from: a run that starts from another run's weights (a run directory, an exported model
folder, or such a folder on the Hub), matched by tensor name, with one log line saying what was and
was not loaded.

The source is configs/smoke.yaml trained for 2 steps. A run started from it trains 1 step at learning
rate 0 (AdamW then leaves every weight as it is), so its only dev evaluation sees the weights it
started from: its best.safetensors and its dev logits must equal the source's bitwise.
"""

import json
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import docre.predict
from docre.checkpoint import load_matching_weights
from docre.config import load_config
from docre.errors import DocreError
from docre.export import export_model
from docre.run_dir import load_trained
from docre.trainer import Interrupted, _abbreviate, init_from_weights, train
from tests.conftest import ROOT
from tests.test_resume import signal_after


def smoke(backbone: str, out: Path, name: str, *extra: str):
    return load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={backbone}", f"output_dir={out}",
                                                     f"run_name={name}", *extra])


def frozen(backbone: str, out: Path, name: str, source: Path, *extra: str):
    """One step at learning rate 0 from `source`'s weights: the run's dev evaluation sees them unchanged."""
    return smoke(backbone, out, name, f"train.init_from={source}", "train.max_steps=1", "train.encoder_lr=0",
                 "train.head_lr=0", *extra)


def init_lines(run_dir: Path) -> list[str]:
    return [line.split(" INFO ", 1)[1] for line in (run_dir / "train.log").read_text().splitlines() if " INFO init_from " in line]


def same_tensors(a: Path, b: Path) -> bool:
    first, second = load_file(a), load_file(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def source(tiny_backbone, tmp_path_factory) -> Path:
    return Path(train(smoke(tiny_backbone, tmp_path_factory.mktemp("source"), "source-s66", "train.max_steps=2"))["run_dir"])


def test_a_run_starts_from_the_source_runs_weights_and_logits(source, tiny_backbone, tmp_path):
    run_dir = Path(train(frozen(tiny_backbone, tmp_path, "copy-s66", source))["run_dir"])
    count = len(load_file(source / "best.safetensors"))
    assert init_lines(run_dir) == [f"init_from {source}: loaded {count} of {count} tensors from best.safetensors; "
                                   "kept fresh (not in the source): none; unused from the source: none"]
    assert same_tensors(run_dir / "best.safetensors", source / "best.safetensors")
    assert same_tensors(run_dir / "dev_logits.safetensors", source / "dev_logits.safetensors")
    # not vacuous: the same run without init_from starts from other logits
    fresh = Path(train(smoke(tiny_backbone, tmp_path, "fresh-s66", "train.max_steps=1", "train.encoder_lr=0",
                             "train.head_lr=0"))["run_dir"])
    assert not same_tensors(fresh / "dev_logits.safetensors", source / "dev_logits.safetensors")
    assert init_lines(fresh) == []


def test_an_exported_folder_and_its_hub_id_are_sources(source, tiny_backbone, tmp_path, monkeypatch):
    exported = export_model(source, tmp_path / "export")
    run_dir = Path(train(frozen(tiny_backbone, tmp_path, "from_export-s66", exported))["run_dir"])
    assert init_lines(run_dir)[0].startswith(f"init_from {exported}: loaded ")
    assert " tensors from model.safetensors; kept fresh (not in the source): none; " in init_lines(run_dir)[0]
    assert same_tensors(run_dir / "best.safetensors", source / "best.safetensors")
    # a Hub id goes through the Predictor's resolve_model (its download replaced by the exported folder)
    monkeypatch.setattr(docre.predict, "_download", lambda repo_id, revision, local_first=False: exported)
    cfg = frozen(tiny_backbone, tmp_path, "from_hub-s66", Path("docre-tests/tiny-atgl"))
    assert init_from_weights(cfg) == exported / "model.safetensors"


def test_a_name_that_is_no_folder_here_nor_a_hub_model_says_so_local_first(tiny_backbone, tmp_path, monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    # "runs/ttm" from a directory without runs/: a mistyped path, more likely than a Hub id
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DocreError) as error:  # tests run with HF_HUB_OFFLINE=1: not in the cache
        train(smoke(tiny_backbone, tmp_path, "run-s66", "train.init_from=runs/ttm"))
    assert str(error.value) == (f"train.init_from: runs/ttm: no such local folder (from {tmp_path}); read as a Hugging "
                                f"Face Hub id, not (completely) in the cache {constants.HF_HUB_CACHE} (HF_HUB_OFFLINE is "
                                "set; `hf download runs/ttm` fetches it where the Hub is reachable)")
    assert not (tmp_path / "run-s66").exists()

    def no_such_repository(*args, **kwargs):
        raise RepositoryNotFoundError("404 Repository Not Found", response=SimpleNamespace(headers={}, request=None))

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_such_repository)  # online, and no such repository
    with pytest.raises(DocreError) as error:
        init_from_weights(smoke(tiny_backbone, tmp_path, "run-s66", "train.init_from=runs/ttm"))
    assert str(error.value) == (f"train.init_from: runs/ttm: no such local folder (from {tmp_path}); read as a Hugging "
                                "Face Hub id, no model this token may read (private? log in with `hf auth login` or "
                                "set HF_TOKEN)")


def test_a_weights_file_stands_for_the_run_or_export_that_holds_it(source, tiny_backbone, tmp_path):
    run_dir = Path(train(frozen(tiny_backbone, tmp_path, "file-s66", source / "best.safetensors"))["run_dir"])
    assert same_tensors(run_dir / "best.safetensors", source / "best.safetensors")
    exported = export_model(source, tmp_path / "export")
    assert init_from_weights(frozen(tiny_backbone, tmp_path, "run-s66", exported / "model.safetensors")) == (
        exported / "model.safetensors").resolve()
    loose = Path(shutil.copy(source / "best.safetensors", tmp_path / "loose.safetensors"))
    for other in (source / "dev_logits.safetensors", loose):  # another file of a run; weights outside any run
        with pytest.raises(DocreError) as error:
            init_from_weights(frozen(tiny_backbone, tmp_path, "run-s66", other))
        assert str(error.value) == (f"train.init_from={other}: a file, not the weights of a run directory or exported "
                                    "model folder; name such a folder (a run's best.safetensors or an export's "
                                    "model.safetensors may stand for it)")


def test_an_unfinished_source_run_is_used_with_a_warning(tiny_backbone, tmp_path, monkeypatch):
    # a pre-empted first stage: its best dev weights so far are handed on, and the log says so
    stage1 = tmp_path / "stage1-s66"
    signal_after(monkeypatch, 2, signal.SIGTERM)
    with pytest.raises(Interrupted):
        train(smoke(tiny_backbone, tmp_path, "stage1-s66", "train.max_steps=3"))
    monkeypatch.undo()
    run_dir = Path(train(frozen(tiny_backbone, tmp_path, "stage2-s66", stage1))["run_dir"])
    assert same_tensors(run_dir / "best.safetensors", stage1 / "best.safetensors")
    assert (f" WARNING init_from {stage1}: the run has not finished (no results.json; checkpoint at step 2): its best dev "
            f"weights so far are used; to hand on its final ones, finish it first with docre-train --resume {stage1}\n"
            in (run_dir / "train.log").read_text())


def test_a_missing_or_wrong_source_fails_before_the_run_directory_is_made(tiny_backbone, tmp_path):
    missing = tmp_path / "runs" / "nosuch-s66"
    (tmp_path / "runs").mkdir()
    with pytest.raises(DocreError) as error:
        train(smoke(tiny_backbone, tmp_path, "run-s66", f"train.init_from={missing}"))
    assert str(error.value) == (f"train.init_from: {missing}: model directory not found (no run directory or "
                                "exported model folder there)")
    with pytest.raises(DocreError) as error:
        train(smoke(tiny_backbone, tmp_path, "run-s66", f"train.init_from={tmp_path / 'runs'}"))
    assert str(error.value).startswith(f"train.init_from: {tmp_path / 'runs'}: neither a run directory (config.yaml, ")
    assert not (tmp_path / "run-s66").exists()


def test_the_runs_own_directory_is_refused_and_kept(source, tiny_backbone, tmp_path):
    own = Path(shutil.copytree(source, tmp_path / "own-s66"))
    with pytest.raises(DocreError) as error:  # train.overwrite=true would otherwise delete the source first
        train(smoke(tiny_backbone, tmp_path, "own-s66", f"train.init_from={own}", "train.overwrite=true"))
    assert str(error.value) == (f"train.init_from={own}: this run's own directory; start from another run's weights, "
                                f"or continue this run with docre-train --resume {own}")
    assert (own / "best.safetensors").is_file() and (own / "results.json").is_file()


def test_a_tensor_of_another_shape_is_one_line_naming_the_setting(source, tiny_backbone, tmp_path):
    with pytest.raises(DocreError) as error:
        train(frozen(tiny_backbone, tmp_path, "narrow-s66", source, "model.emb_size=32"))
    assert str(error.value) == (f"train.init_from: {source / 'best.safetensors'}: head_extractor.weight is [64, 64] "
                                "there and [32, 64] in this model (source -> this run: model.emb_size: 64 -> 32)")


def test_another_relation_map_is_refused(source, tiny_backbone, tmp_path):
    other = Path(shutil.copytree(source, tmp_path / "other"))
    rel2id = json.loads((other / "rel2id.json").read_text())
    first, second = list(rel2id)[1:3]
    columns = rel2id[first], rel2id[second]
    rel2id[first], rel2id[second] = columns[1], columns[0]  # the same relations, two columns swapped
    (other / "rel2id.json").write_text(json.dumps(rel2id))
    with pytest.raises(DocreError) as error:
        train(frozen(tiny_backbone, tmp_path, "run-s66", other))
    assert str(error.value) == (f"train.init_from={other}: its relation map (97 relations) is not this run's (97): {first} "
                                f"is column {columns[1]} there and {columns[0]} here, so its classifier would predict other "
                                "relations")


def test_a_resumed_run_continues_from_its_checkpoint_not_the_source(source, tiny_backbone, tmp_path, monkeypatch):
    moved = Path(shutil.copytree(source, tmp_path / "moved"))
    args = [f"train.init_from={moved}", "train.max_steps=3"]
    run_dir = tmp_path / "run-s66"
    signal_after(monkeypatch, 1, signal.SIGTERM)
    with pytest.raises(Interrupted):
        train(smoke(tiny_backbone, tmp_path, "run-s66", *args))
    monkeypatch.undo()
    shutil.rmtree(moved)  # were init_from applied (or checked) again, the resume would fail here
    results = train(smoke(tiny_backbone, tmp_path, "run-s66", *args, f"train.resume={run_dir}"))
    assert results["steps"] == 3
    log = (run_dir / "train.log").read_text()
    assert len(init_lines(run_dir)) == 1 and f"resumed from {run_dir / 'last'} at step 1" in log
    load_trained(run_dir, torch.device("cpu"))  # the finished run loads without its source too


def test_matching_weights_by_name(tmp_path):
    source = nn.ModuleDict({"a": nn.Linear(2, 3), "b": nn.Linear(3, 1)})
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    model = nn.ModuleDict({"a": nn.Linear(2, 3), "c": nn.Linear(3, 1)})
    kept = model["c"].weight.detach().clone()
    loaded, fresh, unused = load_matching_weights(model, tmp_path / "w.safetensors")
    assert (loaded, fresh, unused) == (["a.weight", "a.bias"], ["c.weight", "c.bias"], ["b.bias", "b.weight"])
    assert torch.equal(model["a"].weight, source["a"].weight) and torch.equal(model["c"].weight, kept)
    wide = nn.ModuleDict({"a": nn.Linear(2, 4)})
    with pytest.raises(DocreError, match=r"a\.weight is \[3, 2\] there and \[4, 2\] in this model \(hint\)$"):
        load_matching_weights(wide, tmp_path / "w.safetensors", " (hint)")


def test_long_name_lists_are_abbreviated():
    assert _abbreviate([]) == "none"
    assert _abbreviate(["bilinear.weight", "bilinear.bias"]) == "bilinear.weight, bilinear.bias"
    axial = [f"axial_layers.{i}.{p}" for i in range(6) for p in ("q.weight", "k.weight")]
    assert _abbreviate(["projection.weight", *axial, "classifier.weight"]) == (
        "projection.weight, axial_layers.* (12), classifier.weight")
    layers = [f"encoder.{part}.weight" for part in ("a", "a2", "b", "c", "d", "e")]
    assert _abbreviate(["x.weight", *layers]) == "x.weight, encoder.* (6)"
    many = [f"m{i}.w" for i in range(7)]
    assert _abbreviate(many) == "m0.w, m1.w, m2.w, m3.w and 3 more"
