"""Table files (configs/tables/): every shipped table loads and each of its runs binds to a valid run
config; malformed tables fail with one line naming the file and field; planning expands rows over
seeds with the documented override order, reads each run's state from disk and, with alpha_seed,
gives the other seeds of an alpha=auto row the alpha that seed's sweep chose."""

import json
import re
import shutil
from pathlib import Path

import pytest

from docre.config import load_config, save_config
from docre.errors import DocreError
from docre.losses import LOSSES
from docre.run_dir import config_differences
from docre.tables import TABLES_DIR, Row, Table, load_table, plan_runs, table_path

ROOT = Path(__file__).resolve().parent.parent
TABLES = sorted(TABLES_DIR.glob("*.yaml"))


def test_the_expected_tables_ship():
    names = {path.stem for path in TABLES}
    assert {"atgl_table2_redocred_bert", "atgl_table2_redocred_roberta", "atgl_table3_redocred_bert",
            "atgl_table2_docgnre_bert", "atgl_table2_dwie_bert", "docred_atlop_bert", "cdr_atlop_scibert",
            "gda_atlop_scibert", "redocred_mini", "cdr_minilm"} <= names


@pytest.mark.parametrize("path", TABLES, ids=[p.stem for p in TABLES])
def test_shipped_table_loads_and_every_run_binds(path):
    text = path.read_text()
    assert text.startswith("#") and f"python scripts/reproduce.py {path.stem}" in text.split("\ntitle:")[0], \
        "each table opens with a comment showing its command"
    table = load_table(path)
    assert table.title and table.source and len(table.seeds) >= 3
    resolved = {}
    for row in table.rows:
        assert (ROOT / row.config).is_file(), f"row {row.name}: no config {row.config}"
        overrides = [*table.overrides, *row.overrides]
        loss = next((o.split("=", 1)[1] for o in overrides if o.startswith("loss.name=")), None)
        assert loss is None or loss in LOSSES, f"row {row.name}: unknown loss {loss}"
        resolved[row.name] = load_config(ROOT / row.config, [*overrides, "seed=1"])
    # no two rows train the same thing (a copy-paste slip in a table)
    names = list(resolved)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert config_differences(resolved[a], resolved[b]), f"rows {a} and {b} resolve to the same config"


def test_shipped_table_rows_are_named_like_config_files():
    # a row's runs are <row>-s<seed>: with rows named like configs (minilm_atgl) a table's runs and
    # `train.py configs/.../minilm_atgl.yaml` follow one convention, not minilm-atgl-s66 beside minilm_atgl-s66
    for path in TABLES:
        for row in load_table(path).rows:
            assert re.fullmatch(r"[a-z0-9_]+", row.name), f"{path.name}: row {row.name!r}: lower-case words joined by '_'"


def test_table_names_resolve():
    assert table_path("redocred_mini") == TABLES_DIR / "redocred_mini.yaml"
    assert table_path(str(TABLES_DIR / "redocred_mini.yaml")) == TABLES_DIR / "redocred_mini.yaml"
    assert table_path("configs/redocred_mini/minilm_atl.yaml") is None  # a run config, not a table
    assert table_path("no_such_table") is None


GOOD = "rows:\n  - {name: a, config: configs/smoke.yaml}\n"


@pytest.mark.parametrize("text, message", [
    ("rows: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "a table file is a mapping"),
    ("titel: x\n" + GOOD, "unknown key 'titel'"),
    ("seeds: [66, x]\n" + GOOD, "seeds: expected a non-empty list of integers"),
    ("seeds: []\n" + GOOD, "seeds: expected a non-empty list of integers"),
    ("rows: []\n", "rows: expected a non-empty list"),
    (None, "bad.yaml: cannot read table file (No such file or directory)"),  # None: no file written
    (b"title: caf\xe9\n", "bad.yaml: not UTF-8 text (byte 10)"),  # Latin-1, as some editors save
    ("rows:\n  - a\n", "rows[0]: expected a mapping with name, config, overrides, published"),
    ("rows:\n  - {name: a}\n", "rows[0]: config: expected a non-empty string"),
    ("rows:\n  - {name: a, config: configs/smoke.yaml, seed: 1}\n", "rows[0]: unknown key 'seed'"),
    ("rows:\n  - {name: a b, config: configs/smoke.yaml}\n", "rows[0]: name 'a b'"),
    ("rows:\n  - {name: atl-s66, config: configs/smoke.yaml}\n", "no -s<number> ending"),
    (GOOD + "  - {name: a, config: configs/smoke.yaml}\n", "the name 'a' is used twice"),
    ("alpha_seed: [66]\n" + GOOD, "alpha_seed: expected the seed whose alpha sweep"),
    ("overrides: [train.epochs]\n" + GOOD, "overrides: expected a list of key=value strings"),
    ("rows:\n  - {name: a, config: configs/smoke.yaml, published: {test_F1: 70}}\n", "unknown key 'test_F1'"),
    ("rows:\n  - {name: a, config: configs/smoke.yaml, published: {test_f1: 0.77x}}\n", "test_f1: expected a percentage"),
    ("rows:\n  - {name: a, config: configs/smoke.yaml, published: {test_f1: 177}}\n", "test_f1: expected a percentage"),
    ("rows:\n  - {name: a, config: configs/smoke.yaml, published: 77.3}\n",
     "rows[0]: published: expected a mapping such as {test_f1: 77.26, note: ...}"),
])
def test_malformed_tables_fail_with_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(DocreError) as error:
        load_table(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)


def smoke_table(backbone: str) -> Table:
    return Table(name="t", seeds=[1, 2], overrides=[f"model.backbone={backbone}", "train.epochs=5", "train.batch_size=1"],
                 rows=[Row("atgl", "configs/smoke.yaml", ["train.epochs=7"]),
                       Row("atl", "configs/smoke.yaml", ["loss.name=atl"])])


def test_plan_expands_rows_over_seeds_with_the_override_order(tmp_path, tiny_backbone):
    runs = plan_runs(smoke_table(tiny_backbone), [1, 2], tmp_path / "t", ["train.batch_size=2"])
    assert [run.cfg.run_name for run in runs] == ["atgl-s1", "atgl-s2", "atl-s1", "atl-s2"]
    assert all(run.run_dir == tmp_path.resolve() / "t" / run.cfg.run_name for run in runs)
    assert all(run.state == "missing" for run in runs)
    first, last = runs[0].cfg, runs[-1].cfg
    assert first.train.epochs == 7 and last.train.epochs == 5  # the row's override beats the table's
    assert first.train.batch_size == 2  # the command line beats both
    assert first.seed == 1 and runs[1].cfg.seed == 2
    assert first.loss == {"name": "atgl", "alpha": 16.5} and last.loss == {"name": "atl"}


def test_plan_reads_each_run_state_and_refuses_another_config(tmp_path, tiny_backbone):
    table = smoke_table(tiny_backbone)
    runs = {run.cfg.run_name: run for run in plan_runs(table, [1, 2], tmp_path)}
    done, unfinished, stale = runs["atgl-s1"], runs["atgl-s2"], runs["atl-s1"]
    for run in (done, unfinished, stale):
        run.run_dir.mkdir(parents=True)
        save_config(run.cfg, run.run_dir / "config.yaml")
    (done.run_dir / "results.json").write_text("{}")
    (unfinished.run_dir / "last").mkdir()
    (unfinished.run_dir / "last" / "state.json").write_text(json.dumps({"counters": {"step": 3}}))
    for name in ("model.safetensors", "optimizer.safetensors"):  # a complete checkpoint has all three files
        (unfinished.run_dir / "last" / name).write_bytes(b"")
    states = {run.cfg.run_name: (run.state, run.detail) for run in plan_runs(table, [1, 2], tmp_path)}
    assert states == {"atgl-s1": ("finished", ""), "atgl-s2": ("resumable", "checkpoint at step 3"),
                      "atl-s1": ("stale", "no checkpoint: starts again"), "atl-s2": ("missing", "")}
    # a finished run of other settings is never counted as this table's
    with pytest.raises(DocreError, match=r"atgl-s1: holds a run of another config \(train\.epochs: 7 -> 9\)"):
        plan_runs(table, [1, 2], tmp_path, ["train.epochs=9"])
    # a stale directory has nothing to lose: it starts again whatever it held
    shutil.rmtree(done.run_dir)
    shutil.rmtree(unfinished.run_dir)
    states = [run.state for run in plan_runs(table, [1, 2], tmp_path, ["train.epochs=9"])]
    assert states == ["missing", "missing", "stale", "missing"]


def test_plan_errors_name_the_row(tmp_path, tiny_backbone):
    table = smoke_table(tiny_backbone)
    # a command-line override that fails on every row is no row's fault (the first row may not even be trained)
    with pytest.raises(DocreError) as error:
        plan_runs(table, [1], tmp_path, ["train.batch_size=2", "train.epoch=3"])
    assert str(error.value) == "override 'train.epoch=3': unknown key 'train.epoch' (did you mean train.epochs?)"
    # one that fails on some rows only names the first such row; so does a row's own override
    with pytest.raises(DocreError, match=r"^table t: row atl: override 'loss.alpha=3': loss 'atl': got an unexpected "):
        plan_runs(table, [1], tmp_path, ["loss.alpha=3"])
    table.rows.append(Row("gone", "configs/none.yaml"))
    with pytest.raises(DocreError, match=r"table t: row gone: config configs/none\.yaml not found"):
        plan_runs(table, [1], tmp_path)
    table.rows[1].overrides.append("train.epoch=3")
    with pytest.raises(DocreError, match=r"^table t: row atl: override 'train.epoch=3': unknown key 'train.epoch'"):
        plan_runs(table, [1], tmp_path, ["train.batch_size=2"])


def test_alpha_seed_passes_the_chosen_alpha_to_the_other_seeds(tmp_path, tiny_backbone):
    table = Table(name="t", alpha_seed=2, overrides=[f"model.backbone={tiny_backbone}"],
                  rows=[Row("atgl", "configs/smoke.yaml", ["loss.alpha=auto"]), Row("fixed", "configs/smoke.yaml")])
    runs = plan_runs(table, [1, 2, 3], tmp_path)
    assert [(run.cfg.run_name, run.state) for run in runs] == [
        ("atgl-s1", "waiting"), ("atgl-s2", "missing"), ("atgl-s3", "waiting"),
        ("fixed-s1", "missing"), ("fixed-s2", "missing"), ("fixed-s3", "missing")]  # a fixed alpha never waits
    assert runs[0].detail == "for the alpha that seed 2's sweep chooses" and runs[0].cfg.loss["alpha"] == "auto"
    # without seed 2 in the command, nothing would ever choose the alpha
    with pytest.raises(DocreError, match=r"table t: row atgl: alpha is tuned on seed 2 \(alpha_seed\), whose sweep "
                                         r"has not finished; add 2 to --seeds"):
        plan_runs(table, [1, 3], tmp_path)
    sweep = runs[1]
    sweep.run_dir.mkdir(parents=True)
    save_config(sweep.cfg, sweep.run_dir / "config.yaml")
    (sweep.run_dir / "results.json").write_text(json.dumps({"alpha": 8.25, "alpha_sweep": []}))
    for seeds in ([1, 2, 3], [3]):  # once it has finished, seed 2 need not be in the command
        runs = {run.cfg.run_name: run for run in plan_runs(table, seeds, tmp_path)}
        assert runs["atgl-s3"].state == "missing" and runs["atgl-s3"].cfg.loss == {"name": "atgl", "alpha": 8.25}
        assert runs["atgl-s3"].overrides[-1] == "loss.alpha=8.25"
    assert runs["fixed-s3"].cfg.loss == {"name": "atgl", "alpha": 16.5}
