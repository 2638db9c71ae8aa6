"""Configs: every shipped YAML loads and its loss binds; typos, wrong types and unknown choices fail
with one line naming the key, before torch, transformers or any model is loaded."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from docre.config import load_config
from docre.errors import DocreError
from docre.tables import TABLES_DIR

ROOT = Path(__file__).resolve().parent.parent
# configs/tables/ holds grids of runs for scripts/reproduce.py, not run configs (tests/test_tables.py)
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "tables" not in p.relative_to(ROOT / "configs").parts)


def test_every_file_under_configs_is_validated():
    # run configs by test_shipped_config_loads below, tables by tests/test_tables.py (which globs TABLES_DIR);
    # a file in neither (another extension, another folder) would ship untested
    on_disk = {p for p in (ROOT / "configs").rglob("*") if p.is_file()}
    tables = set(TABLES_DIR.glob("*.yaml"))
    assert TABLES_DIR == ROOT / "configs" / "tables"
    assert CONFIGS and tables and on_disk == set(CONFIGS) | tables, sorted(map(str, on_disk - set(CONFIGS) - tables))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.run_name
    text = path.read_text()
    assert text.startswith("#"), "each config opens with a comment: what it reproduces and the command"
    assert "python " in text.split("\n\n")[0] or "python " in text[:800], "the opening comment shows the command"


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_shipped_config_run_name_follows_the_convention(path):
    # one convention (README, docs/reproducing.md): the config file's name, words joined by "_", then
    # -s<seed>; table rows are named the same way (tests/test_tables.py)
    assert re.fullmatch(r"[a-z0-9_]+", path.stem), f"{path.name}: a config's name is lower-case words joined by '_'"
    assert load_config(path).run_name == f"{path.stem}-s66"
    assert load_config(path, ["seed=7"]).run_name == f"{path.stem}-s7"


def test_run_name_says_a_loss_only_when_the_command_line_swapped_it():
    # smoke.yaml trains ATGL: naming its own loss again changes nothing; another loss gets its own directory
    assert load_config(ROOT / "configs/smoke.yaml", ["loss.name=atgl"]).run_name == "smoke-s66"
    assert load_config(ROOT / "configs/smoke.yaml", ["loss.name=bce"]).run_name == "smoke-bce-s66"
    assert load_config(ROOT / "configs/redocred_mini/minilm_docunet_bsl.yaml").run_name == "minilm_docunet_bsl-s66"
    assert load_config(None).run_name == "run-s66" and load_config(None, ["loss.name=afl"]).run_name == "run-afl-s66"
    assert load_config(None, ["run_name=mine"]).run_name == "mine"  # a name given is kept as it is


def test_run_name_says_a_model_only_when_the_command_line_swapped_it():
    # trying another model on a config must not land in (or refuse as foreign) the folder of the file's own model
    smoke, ttm = ROOT / "configs/smoke.yaml", ROOT / "configs/redocred_mini/minilm_ttm_re_atgl.yaml"
    assert load_config(smoke, ["model.name=ttm_re"]).run_name == "smoke-ttm_re-s66"
    assert load_config(smoke, ["model={name: dreeam}"]).run_name == "smoke-dreeam-s66"
    assert load_config(smoke, ["model.name=atlop"]).run_name == "smoke-s66"  # smoke.yaml's own model (the default)
    assert load_config(ttm, ["model.name=ttm_re"]).run_name == "minilm_ttm_re_atgl-s66"
    assert load_config(ttm, ["model.name=atlop"]).run_name == "minilm_ttm_re_atgl-atlop-s66"
    assert load_config(None, ["model.name=dreeam", "seed=7"]).run_name == "run-dreeam-s7"
    # both swapped: the model first, then the loss, whatever the order on the command line
    assert load_config(smoke, ["loss.name=atl", "model.name=ttm_re"]).run_name == "smoke-ttm_re-atl-s66"
    assert load_config(smoke, ["model.name=ttm_re", "run_name=mine"]).run_name == "mine"


def test_a_grid_row_that_swaps_the_model_keeps_its_row_name(tmp_path):
    # scripts/reproduce.py and compare_losses name their runs <row>-s<seed> themselves, so the folders of existing
    # grids keep their names whatever a row overrides
    from docre.tables import Row, Table, plan_runs

    table = Table(name="t", rows=[Row("dreeam_row", "configs/smoke.yaml", ["model.name=dreeam", "loss.name=atl"])])
    assert [run.cfg.run_name for run in plan_runs(table, [1, 2], tmp_path)] == ["dreeam_row-s1", "dreeam_row-s2"]


def test_overrides_take_precedence():
    cfg = load_config(ROOT / "configs/redocred_mini/minilm_atgl.yaml", ["train.epochs=2", "loss.alpha=8", "seed=1"])
    assert cfg.train.epochs == 2 and cfg.loss == {"name": "atgl", "alpha": 8} and cfg.seed == 1
    assert cfg.run_name == "minilm_atgl-s1"
    # a loss named on the command line drops the file's loss keywords (alpha is ATGL's)
    switched = load_config(ROOT / "configs/redocred_mini/minilm_atgl.yaml", ["loss.name=atl"])
    assert switched.loss == {"name": "atl"} and switched.run_name == "minilm_atgl-atl-s66"
    back = load_config(ROOT / "configs/redocred_mini/minilm_atl.yaml", ["loss.name=atgl", "loss.alpha=8"])
    assert back.loss == {"name": "atgl", "alpha": 8}


@pytest.mark.parametrize("override, message", [
    (["train.epoch=3"], "unknown key 'train.epoch' (did you mean train.epochs?)"),
    (["trian.epochs=3"], "unknown key 'trian'"),
    (["train.epochs=three"], "train.epochs"),
    (["train.encoder_lr=fast"], "train.encoder_lr"),
    (["model.layer_pooling=first"], "model.layer_pooling='first' is not one of last, mean_last_3"),
    (["train.precision=fp8"], "train.precision='fp8'"),
    (["loss.name=focal"], "loss.name='focal' is not one of"),
    (["loss.gamma=2"], "loss 'atgl': got an unexpected keyword argument 'gamma'"),
    (["data.dataset=conll"], "data.dataset='conll' is not one of"),
    (["train.epochs"], "expected key=value"),
    # each parses alone; together they index past the list, or with a key that is no number
    (["sweep.alpha_grid=[1]", "sweep.alpha_grid.5=2"], "overrides: list index out of range"),
    (["sweep.alpha_grid=[1]", "sweep.alpha_grid.x=2"], "overrides: invalid literal for int() with base 10: 'x'"),
])
def test_bad_values_fail_with_the_key(override, message):
    with pytest.raises(DocreError) as error:
        load_config(ROOT / "configs/redocred_mini/minilm_atgl.yaml", override)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_yaml_files(tmp_path):
    (tmp_path / "typo.yaml").write_text("train:\n  epoch: 3\n")
    (tmp_path / "type.yaml").write_text("train:\n  batch_size: four\n")
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    for name, expected in [("typo", "unknown key 'train.epoch'"), ("type", "train.batch_size"), ("broken", "not valid YAML")]:
        with pytest.raises(DocreError, match=expected.replace(".", r"\.").replace("(", r"\(")):
            load_config(tmp_path / f"{name}.yaml")
    with pytest.raises(DocreError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


# Modules a run needs and a config check must not: the heavy libraries, and docre's model, data and training code.
HEAVY = ("torch", "transformers", "safetensors", "docre.models", "docre.data", "docre.trainer", "docre.sweep")


def test_train_cli_rejects_a_typo_before_loading_anything(tmp_path):
    # train.py runs in a fresh interpreter that records, on exit, which heavy modules it imported
    record_file = tmp_path / "imported.json"
    probe = f"""
import atexit, json, runpy, sys
def record():
    heavy = [m for m in sys.modules if m in {HEAVY!r} or m.startswith(tuple(h + "." for h in {HEAVY!r}))]
    with open({str(record_file)!r}, "w") as f:
        json.dump(sorted(heavy), f)
atexit.register(record)
sys.argv = ["train.py", "configs/redocred_mini/minilm_atgl.yaml", "train.epoch=3"]
runpy.run_path("train.py", run_name="__main__")
"""
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: override 'train.epoch=3': unknown key 'train.epoch' (did you mean train.epochs?)"]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert json.loads(record_file.read_text()) == []  # no torch, no transformers, no model or data code was imported
