"""Result tables as grids of runs: table files, the runs they expand to, and where each run stands.

A table file (`configs/tables/NAME.yaml`) names rows; each row is a run config plus `key=value`
overrides and, where a paper reports it, the published numbers. `scripts/reproduce.py` expands the
rows over seeds into runs `<output_dir>/<table>/<row>-s<seed>/` and `docre.grid` trains them (skipping
the finished ones, resuming the interrupted ones); docre.summary tabulates them next to the published
numbers. scripts/compare_losses.py builds its grid of losses as a table too.

    # ATGL Table 2, Re-DocRED, BERT-base (a comment saying what it reproduces, and the command)
    title: ATLOP on Re-DocRED with BERT-base, ATL vs ATGL
    source: ATGL paper (ACL 2026) Table 2
    seeds: [66, 67, 68]
    overrides: []                       # for every row
    alpha_seed: 66                      # optional: rows with loss.alpha=auto sweep alpha on seed 66 only
    rows:
      - name: atlop_atl                 # a row is named like a config file: words joined by "_"
        config: configs/redocred/bert_atl.yaml
        overrides: []
        published: {dev_f1: 74.22, dev_ign_f1: 73.35, test_f1: 74.02, test_ign_f1: 73.22, note: ...}

With `alpha_seed`, a row whose config says `loss.alpha: auto` runs its alpha sweep (docre/sweep.py) for
that seed only; its other seeds train once, with the alpha that sweep chose on dev. This costs one run
per seed instead of one per value of the grid, for the choice made on one seed; without `alpha_seed`
every seed sweeps.

Published numbers are percentages, keyed `<split>_<metric>` with metric in precision, recall, f1,
ign_f1, optionally with a `_std` twin when the paper reports one.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from docre import run_dir
from docre.config import PROJECT_ROOT, Config, load_config
from docre.errors import DocreError
from docre.sweep import chosen_alpha, is_auto

TABLES_DIR = PROJECT_ROOT / "configs" / "tables"
METRICS = ("precision", "recall", "f1", "ign_f1")
PUBLISHED_KEYS = {f"{split}_{metric}{std}" for split in ("dev", "test") for metric in METRICS for std in ("", "_std")}
TABLE_KEYS = {"title", "source", "seeds", "overrides", "alpha_seed", "rows"}
ROW_KEYS = {"name", "config", "overrides", "published"}
SEED_SUFFIX = re.compile(r"-s(\d+)$")


@dataclass
class Row:
    name: str  # row label; its runs are <name>-s<seed>
    config: str  # config file, relative to the project root (or absolute)
    overrides: list[str] = field(default_factory=list)
    published: dict = field(default_factory=dict)  # <split>_<metric>[_std] -> %, plus "note"


@dataclass
class Table:
    name: str  # the table's folder under the output directory
    title: str = ""
    source: str = ""  # where the published numbers come from
    seeds: list[int] = field(default_factory=lambda: [66])
    overrides: list[str] = field(default_factory=list)  # for every row
    alpha_seed: int | None = None  # loss.alpha=auto rows sweep alpha on this seed; their other seeds reuse its choice
    rows: list[Row] = field(default_factory=list)


@dataclass
class Run:
    """One (row, seed) of a table, with its resolved config and its state on disk."""

    row: Row
    seed: int
    config_path: Path
    overrides: list[str]  # everything train.py gets after the config file
    cfg: Config
    run_dir: Path
    state: str = "missing"  # finished | resumable | stale | missing (docre.run_dir.state_of), or waiting (below)
    detail: str = ""  # e.g. "checkpoint at step 120"


def table_path(name_or_path: str) -> Path | None:
    """The table file meant by a name (configs/tables/NAME.yaml) or a path, if it is a table."""
    candidate = Path(name_or_path)
    if candidate.suffix not in (".yaml", ".yml"):
        candidate = TABLES_DIR / f"{name_or_path}.yaml"
        return candidate if candidate.is_file() else None
    if candidate.is_file() and _is_table_file(candidate):
        return candidate
    return None


def _is_table_file(path: Path) -> bool:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "rows" in data


def load_table(path: Path) -> Table:
    """Read and check a table file (structure only; `plan_runs` checks the configs).

    Raises:
        DocreError: one line naming the file and the offending field.
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise DocreError(f"{path}: cannot read table file ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise DocreError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except yaml.YAMLError as error:
        raise DocreError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DocreError(f"{path}: a table file is a mapping with title, source, seeds, overrides, rows")
    _check_keys(data, TABLE_KEYS, f"{path}")
    table = Table(name=Path(path).stem, title=str(data.get("title", "")), source=str(data.get("source", "")))
    if "seeds" in data:
        seeds = data["seeds"]
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise DocreError(f"{path}: seeds: expected a non-empty list of integers, got {seeds!r}")
        table.seeds = list(seeds)
    table.overrides = _overrides(data.get("overrides"), f"{path}: overrides")
    if "alpha_seed" in data:
        alpha_seed = data["alpha_seed"]
        if not isinstance(alpha_seed, int) or isinstance(alpha_seed, bool):
            raise DocreError(f"{path}: alpha_seed: expected the seed whose alpha sweep the other seeds reuse, got {alpha_seed!r}")
        table.alpha_seed = alpha_seed
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise DocreError(f"{path}: rows: expected a non-empty list of rows")
    for index, item in enumerate(rows):
        where = f"{path}: rows[{index}]"
        if not isinstance(item, dict):
            raise DocreError(f"{where}: expected a mapping with name, config, overrides, published")
        _check_keys(item, ROW_KEYS, where)
        for key in ("name", "config"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise DocreError(f"{where}: {key}: expected a non-empty string")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", item["name"]) or SEED_SUFFIX.search(item["name"]):
            raise DocreError(f"{where}: name {item['name']!r}: use letters, digits, _ . + - and no -s<number> ending")
        table.rows.append(Row(item["name"], item["config"], _overrides(item.get("overrides"), f"{where}: overrides"),
                              _published(item.get("published"), f"{where}: published")))
    names = [row.name for row in table.rows]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DocreError(f"{path}: rows: the name {duplicates[0]!r} is used twice")
    return table


def table_from_configs(paths: list[str], name: str) -> Table:
    """A table with one row per config file, named by the file (for `reproduce.py CONFIG ...`)."""
    rows = [Row(Path(p).stem, str(Path(p).resolve()), [], {}) for p in paths]
    names = [row.name for row in rows]
    for row_name in names:
        if names.count(row_name) > 1:
            raise DocreError(f"two configs are named {row_name!r}; write a table file (configs/tables/) to name the rows")
    return Table(name=name, rows=rows)


def plan_runs(table: Table, seeds: list[int], out: Path, overrides: list[str] = ()) -> list[Run]:
    """Every (row, seed) run, in the folder `out`, with its resolved config and state; the configs
    are loaded and checked here, so a bad override or a missing config fails before anything runs.

    Override order: the table's, the row's, the command line's; then seed, run name and output folder;
    then, with the table's alpha_seed, `loss.alpha=<the alpha seed's choice>` for the other seeds of a
    row whose loss.alpha is auto. Until that seed's sweep has finished, those runs are "waiting".

    Raises:
        DocreError: a config is missing or does not load, or a run directory holds a finished or
            resumable run of another config (it would otherwise be counted, or resumed, as this one).
    """
    out = Path(out).resolve()
    runs = []
    for row in table.rows:
        config_path = _config_path(row)
        if not config_path.is_file():
            raise DocreError(f"table {table.name}: row {row.name}: config {row.config} not found")
        for seed in seeds:
            run_overrides = [*table.overrides, *row.overrides, *overrides,
                             f"seed={seed}", f"run_name={row.name}-s{seed}", f"output_dir={out}"]
            try:
                cfg = load_config(config_path, run_overrides)
            except DocreError as error:
                raise DocreError(_blamed(table, row, overrides, error)) from None
            if table.alpha_seed is not None and seed != table.alpha_seed and is_auto(cfg):
                alpha = chosen_alpha(out / f"{row.name}-s{table.alpha_seed}")
                if alpha is None:
                    if table.alpha_seed not in seeds:
                        raise DocreError(f"table {table.name}: row {row.name}: alpha is tuned on seed {table.alpha_seed} "
                                         f"(alpha_seed), whose sweep has not finished; add {table.alpha_seed} to --seeds")
                    runs.append(Run(row, seed, config_path, run_overrides, cfg, out / cfg.run_name, "waiting",
                                    f"for the alpha that seed {table.alpha_seed}'s sweep chooses"))
                    continue
                run_overrides.append(f"loss.alpha={alpha}")
                cfg = load_config(config_path, run_overrides)
            run = Run(row, seed, config_path, run_overrides, cfg, out / cfg.run_name)
            state = run_dir.state_of(run.run_dir)
            run.state, run.detail = state.kind, state.detail
            if state.kind in ("finished", "resumable"):
                run_dir.check_same_config(run.run_dir, cfg)
            runs.append(run)
    return runs


def _config_path(row: Row) -> Path:
    return Path(row.config) if Path(row.config).is_absolute() else PROJECT_ROOT / row.config


def _blamed(table: Table, row: Row, overrides: list[str], error: DocreError) -> str:
    """The line for a row whose config does not load, led by its table and row; but an override of the command line
    that fails the same way on every row (a misspelt key) is no row's fault, and the first row it fails on may be one
    the command does not even train (--rows)."""
    def error_of(other: Row, command_line: list[str]) -> str:
        try:
            load_config(_config_path(other), [*table.overrides, *other.overrides, *command_line])
        except DocreError as other_error:
            return str(other_error)
        return ""

    if overrides and not error_of(row, []) and all(error_of(other, overrides) == str(error) for other in table.rows):
        return str(error)
    return f"table {table.name}: row {row.name}: {error}"


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise DocreError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _overrides(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise DocreError(f"{where}: expected a list of key=value strings, got {value!r}")
    return list(value)


def _published(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DocreError(f"{where}: expected a mapping such as {{test_f1: 77.26, note: ...}}")
    for key, number in value.items():
        if key == "note":
            continue
        if key not in PUBLISHED_KEYS:
            raise DocreError(f"{where}: unknown key {key!r} (expected <dev|test>_<precision|recall|f1|ign_f1>[_std] or note)")
        if not isinstance(number, (int, float)) or isinstance(number, bool) or not 0 <= number <= 100:
            raise DocreError(f"{where}: {key}: expected a percentage, got {number!r}")
    return dict(value)
