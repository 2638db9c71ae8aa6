"""The docs against the code: README's Layout names what is there."""

import re
from pathlib import Path

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
