"""The docs against the code: README's Layout names what is there, and the run directories the
docs' commands name are the ones docre writes."""

import fnmatch
import re
from pathlib import Path

from docre.losses import LOSSES
from docre.models import MODELS

ROOT = Path(__file__).resolve().parent.parent


def readme_block(heading: str) -> str:
    """The first ``` block after README's `## heading`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1]
    return section.split("```", 2)[1]


def test_readme_layout_names_every_module_and_model():
    layout = readme_block("Layout")
    words = set(re.findall(r"[\w.]+", layout))
    modules = {p.name for p in (ROOT / "docre").glob("*.py") if p.name != "__init__.py"}
    packages = {p.parent.name for p in (ROOT / "docre").glob("*/__init__.py")}
    assert modules - words == set(), "modules of docre/ that README's Layout leaves out"
    assert {f"{name}/" for name in packages} <= set(re.findall(r"\w+/", layout)), "packages of docre/ left out"
    assert set(MODELS) - words == set(), "models of docre.models.MODELS that README's Layout leaves out"
    assert "today" not in layout  # "ATLOP today" outlived the other three models


def run_paths(text: str) -> list[tuple[str, str]]:
    """(folder, run name) of each `runs/[FOLDER/]NAME-s<seed>` in a text; the seed may be a shell
    pattern (s6{6,7,8}, s6?, sS), the name too (minilm_*)."""
    return re.findall(r"runs/(?:([\w.-]+)/)?([\w*?.-]+?)-s(?:\d+|S|\*|\d*\{[\d,]+\}|\d*\?)\b", text)


def test_run_paths_in_the_docs_are_runs_docre_names_that_way():
    # A command a user copies must name the run directory docre writes: <config name>-s<seed> from
    # train.py (or the run_name=... the docs give), <row>-s<seed> in runs/<table>/ from reproduce.py
    # (docs/results.md and the commands' --help examples included: their commands are copied too).
    from docre.tables import TABLES_DIR, load_table

    rows = {path.stem: [row.name for row in load_table(path).rows] for path in TABLES_DIR.glob("*.yaml")}
    stems = {path.stem for path in (ROOT / "configs").rglob("*.yaml") if "tables" not in path.parts}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docre" / "cli").glob("*.py"))]
    stems |= {name for page in pages for name in re.findall(r"run_name=(\w+)-s", page.read_text(encoding="utf-8"))}
    checked, wrong = 0, []
    for page in pages:
        for folder, name in run_paths(page.read_text(encoding="utf-8")):
            if folder in rows:
                names = rows[folder]
            elif not folder:
                swaps = [*LOSSES, *MODELS, *(f"{model}-{loss}" for model in MODELS for loss in LOSSES)]
                names = stems | {f"{stem}-{swap}" for stem in stems for swap in swaps}
            else:
                continue  # a folder of the user's choosing (output_dir=...)
            checked += 1
            if not any(fnmatch.fnmatchcase(candidate, name) for candidate in names):
                wrong.append(f"{page.name}: runs/{folder + '/' if folder else ''}{name}-s...")
    assert checked >= 5 and wrong == []


def test_run_names_given_in_the_docs_follow_the_convention():
    # a name the docs choose (run_name=...) is spelt as docre spells its own: words joined by "_", -s<seed>
    given = [(page.name, name) for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
             for name in re.findall(r"run_name=(\w[^\s`\"']*)", page.read_text(encoding="utf-8"))]
    assert given and [g for g in given if not re.fullmatch(r"[a-z0-9_.]+-s(\d+|S)", g[1])] == []
