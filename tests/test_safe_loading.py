"""Safe loading: docre reads weights only from safetensors, has no pickle anywhere, never calls
torch.load without weights_only=True, and runs code from a model hub only when the config says so."""

import ast
import pickle
from pathlib import Path

import pytest
from torch import nn

from docre.checkpoint import load_weights
from docre.config import load_config
from docre.errors import DocreError

ROOT = Path(__file__).resolve().parent.parent
PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def violations(source: str) -> list[str]:
    """Unsafe loading in Python source, found on its syntax tree (comments and strings do not count):
    pickle modules, torch.load without weights_only=True, torch.save, pickle-allowing keywords,
    trust_remote_code=True, and AutoModel.from_pretrained without use_safetensors=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: imports {m}" for m in modules if m.split(".")[0] in PICKLERS]
        if isinstance(node, ast.Attribute) and "pickle" in node.attr.lower():
            found.append(f"line {node.lineno}: {node.attr}")
        if not isinstance(node, ast.Call):
            continue
        call = ast.unparse(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        constant = {name: value.value for name, value in keywords.items() if isinstance(value, ast.Constant)}
        if call == "torch.load" and constant.get("weights_only") is not True:
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        if call == "torch.save":
            found.append(f"line {node.lineno}: torch.save (pickle)")
        if (constant.get("allow_pickle") is True or constant.get("weights_only") is False
                or constant.get("use_safetensors") is False):
            found.append(f"line {node.lineno}: {call} allows pickle")
        if constant.get("trust_remote_code") is True:
            found.append(f"line {node.lineno}: {call} with trust_remote_code=True")
        if call == "AutoModel.from_pretrained" and constant.get("use_safetensors") is not True:
            found.append(f"line {node.lineno}: AutoModel.from_pretrained may read pytorch_model.bin (pickle)")
    return found


def test_the_scanner_finds_each_kind_of_violation():
    bad = "\n".join([
        "import pickle",
        "from dill import loads",
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "torch.save(state, path)",
        "np.load(path, allow_pickle=True)",
        "AutoModel.from_pretrained(name, trust_remote_code=True)",
        "AutoModel.from_pretrained(name, use_safetensors=False)",
        "frame = pd.read_pickle(path)",
    ])
    assert violations(bad) == [
        "line 1: imports pickle", "line 2: imports dill", "line 3: torch.load without weights_only=True",
        "line 4: torch.load without weights_only=True", "line 4: torch.load allows pickle", "line 5: torch.save (pickle)",
        "line 6: np.load allows pickle", "line 7: AutoModel.from_pretrained with trust_remote_code=True",
        "line 7: AutoModel.from_pretrained may read pytorch_model.bin (pickle)",
        "line 8: AutoModel.from_pretrained allows pickle",
        "line 8: AutoModel.from_pretrained may read pytorch_model.bin (pickle)", "line 9: read_pickle",
    ]
    assert violations("torch.load(path, weights_only=True)\n# import pickle\nx = 'torch.save'\n"
                      "AutoModel.from_pretrained(name, use_safetensors=True)\n") == []


def test_docre_has_no_unsafe_loading():
    sources = sorted((ROOT / "docre").rglob("*.py")) + sorted(ROOT.glob("*.py")) + sorted((ROOT / "scripts").rglob("*.py"))
    assert len(sources) > 10
    found = {str(p.relative_to(ROOT)): hits for p in sources for hits in [violations(p.read_text())] if hits}
    assert found == {}


def test_remote_code_is_off_unless_the_config_turns_it_on(monkeypatch):
    import transformers

    from docre.models import build_model, load_tokenizer

    assert load_config(None).model.trust_remote_code is False
    calls = []

    class Stop(Exception):
        pass

    def record(name):
        def loader(*args, **kwargs):
            calls.append((name, kwargs.get("trust_remote_code")))
            raise Stop

        return loader

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record("tokenizer"))
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", record("model"))
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", record("config"))
    for trust in (False, True):
        for load in (lambda trust=trust: load_tokenizer("org/model", trust_remote_code=trust),
                     lambda trust=trust: build_model("org/model", 3, [1], [2], trust_remote_code=trust),
                     lambda trust=trust: build_model("org/model", 3, [1], [2], trust_remote_code=trust, pretrained=False)):
            with pytest.raises(Stop):
                load()
    assert calls == [("tokenizer", False), ("model", False), ("config", False),
                     ("tokenizer", True), ("model", True), ("config", True)]
    # training and loading a trained run build the backbone through one function, which passes the config's value
    tree = ast.parse((ROOT / "docre" / "models" / "__init__.py").read_text())
    builder = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "build_model_from_config")
    assert "model_cfg.trust_remote_code" in ast.unparse(builder)
    for module in ("trainer.py", "run_dir.py"):
        tree = ast.parse((ROOT / "docre" / module).read_text())
        loads = [n for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and ast.unparse(n.func) in ("load_tokenizer", "build_model")]
        assert loads and all("cfg.model.trust_remote_code" in ast.unparse(n) for n in loads), module


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_posing_as_weights_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "code_ran"
    weights = tmp_path / "best.safetensors"
    weights.write_bytes(pickle.dumps({"weight": _RunsCode(marker)}))
    with pytest.raises(DocreError) as error:
        load_weights(nn.Linear(2, 2), weights)
    assert str(error.value).startswith(f"{weights}: cannot read weights (") and "\n" not in str(error.value)
    assert not marker.exists()


def test_a_backbone_with_pickled_weights_only_is_refused(tmp_path, tiny_backbone):
    """A folder with pytorch_model.bin and no model.safetensors: transformers would unpickle the
    .bin by default; docre asks for safetensors and says what to do in one line."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from docre.models import build_model

    folder = tmp_path / "bin_only"
    shutil.copytree(tiny_backbone, folder)
    weights = next(folder.glob("*.safetensors"))
    torch.save(load_file(weights), folder / "pytorch_model.bin")  # the test builds the pickle docre must refuse
    weights.unlink()
    with pytest.raises(DocreError) as error:
        build_model(str(folder), 3, [1], [2])
    assert str(error.value) == (f"model.backbone: folder {str(folder)!r} has its weights only as a pickle (*.bin); "
                                "docre reads safetensors only: convert them once (load the model and save_pretrained it)")
