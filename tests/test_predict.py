"""Using a trained model: the Predictor API and scripts/predict.py give exactly the rows evaluate.py
scores, on fixture and real Re-DocRED documents; raw text predicts like the same document in DocRED
format; leaderboard files are valid; an exported folder loads offline and predicts identically;
evaluate.py refuses unlabelled splits with a command that works; bad input is one line, exit 1."""

import copy
import importlib
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from docre.config import load_config
from docre.errors import DocreError, run_cli
from docre.losses import LOSSES
from docre.metrics import docred_scores
from docre.predict import Predictor, decision_scores, prepare_documents, read_documents
from docre.trainer import train
from tests.conftest import FIXTURES, REDOCRED_DEV, ROOT

FIXTURE = FIXTURES / "docred_tiny.json"
REDOCRED_SLICE = f"{REDOCRED_DEV}[:2]"


def run(args, **kwargs):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, **kwargs)


def load_script(name: str):
    """The command behind `name` ("evaluate", "scripts/predict"): docre.cli.<its stem>."""
    return importlib.import_module(f"docre.cli.{Path(name).name}")


def call(script: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a CLI's main() in this process (no start-up cost); returns (exit status, stdout, stderr)."""
    module = load_script(script)
    handlers = list(logging.getLogger("docre").handlers)
    old_argv = sys.argv
    sys.argv = [script, *map(str, argv)]
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(module.main)
    finally:
        sys.argv = old_argv
        logger = logging.getLogger("docre")  # setup_logging bound a handler to the captured stderr
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in handlers:
            logger.addHandler(handler)
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


@pytest.fixture(scope="module")
def backbone(tiny_backbone, tmp_path_factory) -> Path:
    """A private copy of the tiny backbone, so one test can hide it to prove offline loading."""
    return Path(shutil.copytree(tiny_backbone, tmp_path_factory.mktemp("predict") / "backbone"))


@pytest.fixture(scope="module")
def run_dir(backbone, tmp_path_factory) -> Path:
    """configs/smoke.yaml trained for 3 steps: barely trained, so it predicts many relations."""
    out = tmp_path_factory.mktemp("predict_runs")
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={backbone}", f"output_dir={out}", "train.max_steps=3",
                                                    "model.max_seq_length=256"])  # cuts real documents: faster, and tested
    return Path(train(cfg)["run_dir"])


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor.from_pretrained(run_dir, device="cpu")


@pytest.fixture(scope="module")
def fixture_docs() -> list[dict]:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def redocred_docs() -> list[dict]:
    return read_documents(REDOCRED_SLICE)


@pytest.fixture(scope="module")
def redocred_triples(predictor, redocred_docs) -> list[list[dict]]:
    return predictor.predict(redocred_docs)


def row_set(rows) -> set:
    return {(r["title"], r["h_idx"], r["t_idx"], r["r"]) for r in rows}


def assert_valid_leaderboard(rows: list[dict], docs: list[dict], rel2id: dict) -> None:
    entities = {d["title"]: len(d["vertexSet"]) for d in docs}
    for row in rows:
        assert set(row) == {"title", "h_idx", "t_idx", "r", "evidence"} and row["evidence"] == []
        assert row["title"] in entities
        assert 0 <= row["h_idx"] < entities[row["title"]] and 0 <= row["t_idx"] < entities[row["title"]]
        assert row["h_idx"] != row["t_idx"]
        assert rel2id.get(row["r"], 0) > 0
    assert len(row_set(rows)) == len(rows)  # no duplicates


# ---------------------------------------------------------------------------------------------- API
def test_import_docre_stays_light_and_predictor_is_lazy():
    code = ("import sys, docre; assert 'torch' not in sys.modules; "
            "from docre import Predictor; assert 'torch' in sys.modules and Predictor.__name__ == 'Predictor'")
    result = run(["-c", code])
    assert result.returncode == 0, result.stderr[-2000:]


def test_predictions_are_the_rows_training_and_evaluate_score(run_dir, predictor, fixture_docs, capsys):
    rows = predictor.leaderboard_rows(fixture_docs)
    logged = json.loads((run_dir / "dev_predictions.json").read_text())  # written by train() for the best checkpoint
    assert rows and row_set(rows) == row_set(logged) and len(rows) == len(logged)
    status, out, _ = call("evaluate", [run_dir, "--data", FIXTURE, "--json"], capsys)
    assert status == 0
    evaluated = json.loads(out.strip().splitlines()[-1])
    ours = docred_scores(rows, fixture_docs, fixture_docs)
    for key in ("num_predicted", "num_correct", "precision", "recall", "f1", "ign_f1"):
        assert ours[key] == evaluated[key], key
    triples = predictor.predict(fixture_docs)
    assert row_set(rows) == {(d["title"], t["h_idx"], t["t_idx"], t["r"]) for d, ts in zip(fixture_docs, triples) for t in ts}


def test_real_redocred_documents_score_as_evaluate_scores_them(predictor, redocred_docs, redocred_triples, capsys):
    rows = predictor.leaderboard_rows(redocred_docs)
    assert_valid_leaderboard(rows, redocred_docs, predictor.rel2id)
    assert row_set(rows) == {(d["title"], t["h_idx"], t["t_idx"], t["r"])
                             for d, ts in zip(redocred_docs, redocred_triples) for t in ts}
    status, out, _ = call("evaluate", [predictor_dir(predictor), "--data", REDOCRED_SLICE, "--json"], capsys)
    assert status == 0
    evaluated = json.loads(out.strip().splitlines()[-1])
    ours = docred_scores(rows, redocred_docs, json.loads(FIXTURE.read_text()))
    for key in ("num_predicted", "num_correct", "num_gold", "f1", "ign_f1"):
        assert ours[key] == evaluated[key], key


def predictor_dir(predictor: Predictor) -> Path:
    return Path(predictor.cfg.output_dir) / predictor.cfg.run_name


def test_triples_carry_names_sentences_and_the_loss_margin(predictor, fixture_docs):
    from docre.data.feature import featurize
    from docre.inference import predict_logits

    triples = predictor.predict(fixture_docs)
    rel_info = json.loads((ROOT / "data/docred/rel_info.json").read_text())
    features, _ = featurize(fixture_docs, predictor.tokenizer, predictor.rel2id, "*", 1024)
    logits = predict_logits(predictor.model, features, len(predictor.rel2id), 0, 1, torch.device("cpu"), torch.float32,
                            show=False)
    for doc, doc_triples, feature, doc_logits in zip(fixture_docs, triples, features, logits):
        assert doc_triples
        pair = {(int(h), int(t)): p for p, (h, t) in enumerate(feature.hts)}
        for t in doc_triples:
            assert t["h_name"] == doc["vertexSet"][t["h_idx"]][0]["name"]
            assert t["t_name"] == doc["vertexSet"][t["t_idx"]][0]["name"]
            assert t["r_name"] == rel_info[t["r"]]
            assert t["h_sents"] == sorted({m["sent_id"] for m in doc["vertexSet"][t["h_idx"]]})
            assert t["t_sents"] == sorted({m["sent_id"] for m in doc["vertexSet"][t["t_idx"]]})
            assert t["evidence"] == []  # sentence ids; empty until a model predicts evidence
            row = doc_logits[pair[(t["h_idx"], t["t_idx"])]]
            margin = float(row[predictor.rel2id[t["r"]]] - row[0])  # ATGL: relation logit minus TH logit
            assert t["score"] == pytest.approx(margin, abs=1e-4) and t["score"] > 0
        assert [t["score"] for t in doc_triples] == sorted((t["score"] for t in doc_triples), reverse=True)


def test_top_k_caps_relations_per_pair(predictor, fixture_docs):
    def per_pair(triples):
        counts = {}
        for doc, ts in zip(fixture_docs, triples):
            for t in ts:
                counts[(doc["title"], t["h_idx"], t["t_idx"])] = counts.get((doc["title"], t["h_idx"], t["t_idx"]), 0) + 1
        return counts

    default, one, every = (predictor.predict(fixture_docs, top_k=k) for k in (None, 1, 1000))
    assert max(per_pair(default).values()) <= predictor.cfg.eval.top_k
    assert set(per_pair(one).values()) == {1} and per_pair(one).keys() == per_pair(every).keys()
    flat = [{(d["title"], t["h_idx"], t["t_idx"], t["r"]) for d, ts in zip(fixture_docs, out) for t in ts}
            for out in (one, default, every)]
    assert flat[0] <= flat[1] <= flat[2] and len(flat[0]) < len(flat[2])
    with pytest.raises(DocreError, match="top_k must be at least 1"):
        predictor.predict(fixture_docs, top_k=0)


def test_batch_size_does_not_change_predictions(predictor, fixture_docs):
    assert predictor.predict(fixture_docs, batch_size=1) == predictor.predict(fixture_docs, batch_size=3)


def test_batch_size_below_one_is_refused_as_the_cli_refuses_it(predictor, fixture_docs):
    for size in (0, -1):  # 0 once fell back to the run's eval.batch_size; -1 ran one document per batch
        for method in (predictor.predict, predictor.predict_records, predictor.leaderboard_rows):
            with pytest.raises(DocreError, match=rf"^batch_size must be at least 1, got {size}$"):
                method(fixture_docs, batch_size=size)


def test_raw_text_predicts_like_the_same_document_in_docred_format(predictor, fixture_docs):
    doc = fixture_docs[0]  # "Alpha works for Beta . Beta is in Gamma City ."
    text = "Alpha works for Beta.  Beta is in\nGamma City."
    raw = {"title": doc["title"], "text": text, "entities": [
        {"mentions": [[0, 5]]},
        {"mentions": [[16, 20], [23, 27]]},
        {"name": "Gamma City (the city)", "mentions": [[34, 44]]},
    ]}
    converted = prepare_documents([raw])[0]
    assert converted["sents"] == doc["sents"]
    def places(vertex_set):
        return [[(m["sent_id"], m["pos"]) for m in e] for e in vertex_set]

    assert places(converted["vertexSet"]) == places(doc["vertexSet"])
    from_text, from_docred = predictor.predict([raw])[0], predictor.predict([doc])[0]
    assert from_text
    def unnamed(triples):
        return [{**t, "t_name": None, "h_name": None} for t in triples]

    assert unnamed(from_text) == unnamed(from_docred)
    assert {t["h_name"] for t in from_text if t["h_idx"] == 2} <= {"Gamma City (the city)"}


def test_documents_with_one_entity_get_no_triples(predictor, fixture_docs):
    lonely = {"title": "lonely", "sents": [["alpha", "works", "."]],
              "vertexSet": [[{"name": "alpha", "sent_id": 0, "pos": [0, 1]}]]}
    assert predictor.predict([lonely]) == [[]]
    mixed = predictor.predict([lonely, fixture_docs[1]])
    assert mixed[0] == [] and mixed[1] == predictor.predict([fixture_docs[1]])[0]


def test_labels_with_relations_unknown_to_the_model_are_ignored(predictor, fixture_docs):
    doc = copy.deepcopy(fixture_docs[0])
    doc["labels"].append({"h": 0, "t": 2, "r": "P_NOT_A_RELATION", "evidence": []})
    assert predictor.predict([doc]) == predictor.predict([fixture_docs[0]])


def test_api_input_errors_are_docre_errors(predictor, fixture_docs):
    with pytest.raises(DocreError, match=r"document 1: neither DocRED format"):
        predictor.predict([fixture_docs[0], {"words": []}])
    with pytest.raises(DocreError, match=r"duplicate of document 0"):
        predictor.predict([fixture_docs[0], fixture_docs[0]])
    with pytest.raises(DocreError, match=r"vertexSet\[0\]\[0\]\.pos"):
        bad = copy.deepcopy(fixture_docs[0])
        bad["vertexSet"][0][0]["pos"] = [3, 99]
        predictor.predict([bad])


def test_one_document_in_gives_one_result_out(predictor, fixture_docs):
    listed = predictor.predict(fixture_docs)
    assert predictor.predict(fixture_docs[1]) == listed[1]  # a dict, not a list of one
    assert predictor.leaderboard_rows(fixture_docs[1]) == predictor.leaderboard_rows([fixture_docs[1]])
    assert predictor.predict_records(fixture_docs[1]) == {"title": fixture_docs[1]["title"], "triples": listed[1]}


def test_records_of_raw_text_carry_the_sentence_spans_that_sentence_ids_index(predictor):
    text = "Alpha works for Beta.  Beta is in\nGamma City."
    raw = {"title": "t", "text": text, "entities": [{"mentions": [[0, 5]]}, {"mentions": [[16, 20], [23, 27]]},
                                                    {"mentions": [[34, 44]]}]}
    record = predictor.predict_records(raw)
    assert record["triples"] == predictor.predict(raw)
    assert record["sent_spans"] == [[0, 21], [23, 45]]  # "Alpha works for Beta." and "Beta is in\nGamma City."
    for triple in record["triples"]:  # each sentence id names the text its mentions stand in
        for sent in triple["t_sents"]:
            start, end = record["sent_spans"][sent]
            assert any(text[a:b] in text[start:end] for a, b in raw["entities"][triple["t_idx"]]["mentions"])


def test_raw_text_with_overlapping_mentions_is_refused(predictor):
    text = "Toyota City hosts Toyota."
    with pytest.raises(DocreError, match=r"^input: document 0 \('document 0'\): entities: must be a non-empty list .*"
                                         r'leave entities out and have docre find them: pip install "docre\[text\]"; '
                                         r"docs/predict.md#plain-text\)$"):
        predictor.predict({"text": text, "entities": []})
    found_by_search = {"text": text, "entities": [{"name": "Toyota City", "mentions": [[0, 11]]},
                                                  {"name": "Toyota", "mentions": [[0, 6], [18, 24]]}]}
    with pytest.raises(DocreError) as error:
        predictor.predict(found_by_search)
    assert str(error.value) == ("input: document 0 ('document 0'): entities[1].mentions[0] [0, 6] 'Toyota' and "
                                "entities[0].mentions[0] [0, 11] 'Toyota City' overlap; a word can be a mention of one "
                                "entity only (drop the shorter span if it was found inside a longer name)")
    fixed = {**found_by_search, "entities": [found_by_search["entities"][0], {"name": "Toyota", "mentions": [[18, 24]]}]}
    assert isinstance(predictor.predict(fixed), list)
    crossing = {"text": "New York City Hall", "entities": [{"mentions": [[0, 13]]}, {"mentions": [[4, 18]]}]}
    with pytest.raises(DocreError, match=r"entities\[0\]\.mentions\[0\] \[0, 13\] 'New York City' and entities\[1\]"):
        predictor.predict(crossing)
    nested = {"text": "The University of Warsaw in Warsaw.", "entities": [{"mentions": [[4, 24]]}, {"mentions": [[4, 14]]}]}
    with pytest.raises(DocreError, match=r"entities\[1\]\.mentions\[0\] \[4, 14\] 'University' and entities\[0\]"):
        predictor.predict(nested)
    past_a_neighbour = {"text": nested["text"], "entities": [  # its own mention "of" lies between the two
        {"mentions": [[4, 24], [15, 17]]}, {"mentions": [[18, 24], [28, 34]]}]}
    with pytest.raises(DocreError, match=r"\[4, 24\] 'University of Warsaw' and entities\[1\]\.mentions\[0\] \[18, 24\]"):
        predictor.predict(past_a_neighbour)


# --------------------------------------------------------------------------- plain text (the text extra)

CURIE = ("Marie Curie was born in Warsaw, Poland.\n\n"
         "Curie moved to Paris in 1891 and worked for IBM (International Business Machines).")


@pytest.fixture(scope="module")
def spacy_pipeline():
    """The real en_core_web_sm; plain-text tests skip only where the text extra is not installed."""
    pytest.importorskip("spacy", reason='the text extra is not installed (pip install "docre[text]")')
    from docre.data.entities import load_pipeline

    return load_pipeline("en_core_web_sm")


@pytest.fixture()
def without_spacy(monkeypatch):
    """As where the text extra is not installed: `import spacy` fails."""
    from docre.data.entities import load_pipeline

    load_pipeline.cache_clear()
    monkeypatch.setitem(sys.modules, "spacy", None)
    yield
    load_pipeline.cache_clear()


def test_plain_text_runs_the_whole_way(predictor, spacy_pipeline):
    triples = predictor.predict(CURIE)
    assert triples and triples == predictor.predict({"text": CURIE}) == predictor.predict([CURIE])[0]
    record = predictor.predict_records(CURIE)
    assert record["entities_by"] == "en_core_web_sm" and record["triples"] == triples
    names = [entity["name"] for entity in record["entities"]]
    assert {"Marie Curie", "Warsaw", "Poland", "Paris", "1891", "IBM"} <= set(names)
    ibm = record["entities"][names.index("IBM")]
    assert ibm["type"] == "ORG" and [CURIE[a:b] for a, b in ibm["mentions"]] == ["IBM", "International Business Machines"]
    for triple in triples:  # h_idx / t_idx index the found entities; sentence ids index sent_spans
        assert triple["h_name"] == names[triple["h_idx"]] and triple["t_name"] == names[triple["t_idx"]]
        for a, b in record["entities"][triple["h_idx"]]["mentions"]:
            assert any(start <= a and b <= end for start, end in (record["sent_spans"][i] for i in triple["h_sents"]))
    assert [CURIE[a:b] for a, b in record["sent_spans"]] == [
        "Marie Curie was born in Warsaw, Poland.", "Curie moved to Paris in 1891 and worked for IBM (International Business "
        "Machines)."]
    assert predictor.leaderboard_rows(CURIE) == predictor.leaderboard_rows([{"text": CURIE}])


def test_a_users_own_mentions_are_grouped_and_predicted(predictor):
    text = "Alpha works for Beta.  Beta is in\nGamma City."
    record = predictor.predict_records({"text": text, "mentions": [[0, 5], [16, 20], [23, 27], [34, 44]]})
    assert record["entities_by"] == "mentions"
    assert [[text[a:b] for a, b in e["mentions"]] for e in record["entities"]] == [["Alpha"], ["Beta", "Beta"], ["Gamma City"]]
    given = {"text": text, "entities": [{"mentions": [[0, 5]]}, {"mentions": [[16, 20], [23, 27]]}, {"mentions": [[34, 44]]}]}
    assert record["triples"] == predictor.predict(given)  # the same entities, given: the same triples


def test_a_text_with_fewer_than_two_entities_found_gets_one_line(predictor, spacy_pipeline, docre_warnings):
    assert predictor.predict(["nothing here at all.", "Paris is nice."]) == [[], []]
    lines = [r.getMessage() for r in docre_warnings.records if r.levelno >= logging.WARNING]
    assert lines == ["2 documents with fewer than two entities found, so no relations: 'document 0', 'document 1'"]
    record = predictor.predict_records("nothing here at all.")
    assert record["triples"] == [] and record["entities"] == [] and record["sent_spans"] == [[0, 20]]


def test_cli_turns_a_txt_file_into_a_page_of_the_found_entities(run_dir, predictor, spacy_pipeline, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("\ufeff" + CURIE + "\n", encoding="utf-8")  # a byte order mark, as Windows editors write
    status, out, _ = call("scripts/predict", [run_dir, notes, "-o", tmp_path / "notes.jsonl"], capsys)
    assert status == 0 and out.startswith("1 document, ")
    record = json.loads((tmp_path / "notes.jsonl").read_text())
    assert record == predictor.predict_records({"title": "notes", "text": CURIE + "\n"})
    status, _, _ = call("scripts/predict", [run_dir, notes, "-o", tmp_path / "notes.html"], capsys)
    page = (tmp_path / "notes.html").read_text()
    assert status == 0 and "Entities found by the spaCy pipeline en_core_web_sm and grouped by docre." in page
    assert '<span class="m e5" title="IBM (ORG)">IBM</span>' in page
    assert '<span class="m e5" title="IBM (ORG)">International Business Machines</span>' in page

    empty = tmp_path / "empty.txt"
    empty.write_text("nothing here at all.\n")
    status, out, err = call("scripts/predict", [run_dir, empty, "-o", tmp_path / "empty.html"], capsys)
    assert status == 0 and out.startswith("1 document, 0 relations -> ")
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and warnings[0].endswith("1 document with fewer than two entities found, so no relations: 'empty'")
    page = (tmp_path / "empty.html").read_text()
    assert '<p class="note">No entity found in this text, so no relations.</p>' in page and "<table" not in page


def test_cli_streams_json_lines_of_text_and_finds_their_entities(run_dir, predictor, spacy_pipeline, tmp_path, capsys):
    docs = [{"text": CURIE}, {"title": "second", "text": "Alpha met Beta in Paris."}, {"text": "no names here."}]
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    status, _, _ = call("scripts/predict", [run_dir, source, "-o", tmp_path / "out.jsonl", "--chunk-size", "2"], capsys)
    assert status == 0
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines == predictor.predict_records(docs)
    assert json.loads((tmp_path / "out.jsonl.done.json").read_text())["settings"]["spacy_model"] == "en_core_web_sm"


def test_without_the_text_extra_plain_text_is_refused_in_one_line(run_dir, predictor, tmp_path, capsys, without_spacy):
    install = r'finding them needs spaCy: pip install "docre\[text\]" && python -m spacy download en_core_web_sm'
    notes = tmp_path / "notes.txt"
    notes.write_text(CURIE)
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"title": "T", "text": CURIE}) + "\n")
    for source, where in ((notes, r"notes\.txt: document 0 \('notes'\)"), (texts, r"texts\.jsonl: line 1 \('T'\)")):
        status, _, err = call("scripts/predict", [run_dir, source, "-o", tmp_path / "out.jsonl"], capsys)
        assert status == 1 and len(err.strip().splitlines()) == 1, err
        assert re.match(rf"^error: .*{where}: no entities given, and {install} \(docs/predict\.md#plain-text\)$", err), err
    with pytest.raises(DocreError, match=rf"^input: document 0 \('document 0'\): no entities given, and {install}"):
        predictor.predict(CURIE)
    assert predictor.predict({"text": "Alpha met Beta.", "mentions": [[0, 5], [10, 14]]}) is not None  # needs no spaCy


def test_a_missing_spacy_pipeline_is_one_line(run_dir, spacy_pipeline, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text(CURIE)
    status, _, err = call("scripts/predict", [run_dir, notes, "-o", tmp_path / "out.html", "--spacy-model", "xx_nosuch_sm"],
                          capsys)
    assert status == 1 and err.strip() == (
        "error: notes.txt: document 0 ('notes'): no entities given, and the spaCy pipeline 'xx_nosuch_sm' is not installed: "
        "python -m spacy download xx_nosuch_sm (or name another: --spacy-model, or spacy_model= in Python; "
        "docs/predict.md#plain-text)"
    ).replace("notes.txt", str(notes))
    folder = tmp_path / "models" / "nosuch"  # a folder is loaded, not downloaded
    status, _, err = call("scripts/predict", [run_dir, notes, "-o", tmp_path / "out.html", "--spacy-model", folder], capsys)
    assert status == 1 and err.strip() == (
        f"error: {notes}: document 0 ('notes'): no entities given, and the spaCy pipeline folder '{folder}' does not exist")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_decision_score_is_positive_exactly_where_the_loss_decodes_a_relation(name):
    """The score shown with a triple agrees with the loss's own decode (before the top-k cap)."""
    from tests.losses.test_contract import built, case

    loss_fn = built(name)  # with its training statistics, as a run builds it
    logits, _ = case(loss_fn, pairs=64, seed=1)  # in the loss's own label space (AMTL: 3 more columns)
    predicted = loss_fn.decode(logits, top_k=logits.size(1))[:, 1:] > 0
    assert torch.equal(predicted, decision_scores(loss_fn, logits)[:, 1:] > 0)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_writes_triples_leaderboard_and_codalab_zip(run_dir, predictor, fixture_docs, tmp_path, capsys):
    status, out, _ = call("scripts/predict", [run_dir, FIXTURE, "-o", tmp_path / "out.jsonl"], capsys)
    assert status == 0 and "3 documents" in out and "documents/s" in out
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["title"] for line in lines] == [d["title"] for d in fixture_docs]
    assert [line["triples"] for line in lines] == predictor.predict(fixture_docs)

    expected = predictor.leaderboard_rows(fixture_docs, top_k=2)
    args = [run_dir, FIXTURE, "-o", tmp_path / "result.json", "--top-k", "2", "--batch-size", "1"]
    assert call("scripts/predict", args, capsys)[0] == 0
    rows = json.loads((tmp_path / "result.json").read_text())
    assert rows == expected
    assert_valid_leaderboard(rows, fixture_docs, predictor.rel2id)
    assert call("scripts/predict", [run_dir, FIXTURE, "-o", tmp_path / "result.zip", "--top-k", "2"], capsys)[0] == 0
    with zipfile.ZipFile(tmp_path / "result.zip") as archive:
        assert archive.namelist() == ["result.json"]
        assert json.loads(archive.read("result.json")) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "result.json", "result.zip"]  # no temporary files left


def test_cli_reads_raw_text_json_lines(run_dir, predictor, tmp_path, capsys):
    docs = [
        {"text": "Alpha works for Beta in the city of Gamma.", "entities": [
            {"mentions": [[0, 5]], "type": "PER"}, {"mentions": [[16, 20]]}, {"name": "Gamma", "mentions": [[36, 41]]}]},
        {"title": "second", "text": "Beta met alpha.\n\nAlpha lives in Delta.", "entities": [
            {"mentions": [[0, 4]]}, {"mentions": [[9, 14], [17, 22]]}, {"mentions": [[32, 37]]}]},
    ]
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in docs) + "\n\n")
    status, _, _ = call("scripts/predict", [run_dir, source, "-o", tmp_path / "out.jsonl", "--format", "text"], capsys)
    assert status == 0
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["title"] for line in lines] == ["document 0", "second"]
    assert lines[1]["sent_spans"] == [[0, 15], [17, 38]]
    assert [line["triples"] for line in lines] == predictor.predict(docs)
    assert any(t["h_sents"] == [0, 1] for t in lines[1]["triples"] if t["h_idx"] == 1)
    assert all(t["evidence"] == [] for line in lines for t in line["triples"])


def test_cli_on_real_redocred_slice_agrees_with_the_api(run_dir, redocred_triples, tmp_path, capsys):
    status, _, _ = call("scripts/predict", [run_dir, REDOCRED_SLICE, "-o", tmp_path / "out.jsonl"], capsys)
    assert status == 0
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["triples"] for line in lines] == redocred_triples


def hostile_inputs(tmp_path: Path) -> dict:
    good_text = {"text": "Alpha works for Beta.", "entities": [{"mentions": [[0, 5]]}, {"mentions": [[16, 20]]}]}
    cases = {
        "bad_json.jsonl": (json.dumps(good_text) + "\n{not json\n", r"bad_json\.jsonl: line 2: invalid JSON"),
        "cut_word.jsonl": (json.dumps({**good_text, "title": "T", "entities": [{"mentions": [[0, 3]]}]}),
                           r"line 1 \('T'\): entities\[0\]\.mentions\[0\]: \[0, 3\] 'Alp' ends inside the word 'Alpha'"),
        "outside.jsonl": (json.dumps({**good_text, "entities": [{"mentions": [[0, 5]]}, {"mentions": [[16, 80]]}]}),
                          r"entities\[1\]\.mentions\[0\]: \[16, 80\] lies outside the text"),
        "list.json": ("[1, 2]", r"document 0: neither DocRED format"),
        "docred_bad.json": (json.dumps([{"title": "x", "sents": [["a"]], "vertexSet": []}]),
                            r"vertexSet: must be a non-empty list"),
        "latin1.jsonl": (None, r"latin1\.jsonl: line 1: not UTF-8 text"),
        "empty.jsonl": ("", r"file is empty"),
        "no_entities.jsonl": ('{"text": "Marie Curie was born in Warsaw.", "entities": []}\n',
                              r"line 1 \('document 0'\): entities: must be a non-empty list .*docs/predict\.md#plain-text\)$"),
        "mentions.jsonl": ('{"text": "Toyota City", "mentions": [[0, 11], [0, 6]]}\n',
                           r"line 1 \('document 0'\): mentions\[1\] \[0, 6\] 'Toyota' and mentions\[0\] \[0, 11\] 'Toyota City' "
                           "overlap"),
        "latin1.txt": (None, r"latin1\.txt: not UTF-8 text \(byte 3\)$"),
    }
    paths = {}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is None:
            path.write_bytes(b'{"text": "caf\xe9"}\n' if name.endswith(".jsonl") else b"caf\xe9 au lait\n")
        else:
            path.write_text(content)
        paths[name] = (path, message)
    return paths


def test_cli_refuses_hostile_input_with_one_line(run_dir, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    output.write_text("previous\n")
    for name, (path, message) in hostile_inputs(tmp_path).items():
        status, _, err = call("scripts/predict", [run_dir, path, "-o", output], capsys)
        assert status == 1, name
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and re.search(message, err), (name, err)
    for args, message in [
        ([run_dir, tmp_path / "missing.json", "-o", output], r"missing\.json: file not found"),
        ([run_dir, FIXTURE, "-o", tmp_path / "out.csv"], r"out\.csv: the output must end in \.jsonl, \.json, \.zip"),
        ([run_dir, FIXTURE, "-o", output, "--top-k", "0"], r"--top-k must be at least 1"),
        ([run_dir, FIXTURE, "-o", output, "--format", "text"],
         r"document 0 \('Alpha at Beta'\): text: must be a non-empty string"),
        ([tmp_path, FIXTURE, "-o", output], r"neither a run directory .* nor an exported model folder"),
        ([tmp_path / "no_run", FIXTURE, "-o", output], r"no_run: model directory not found"),
        ([run_dir, FIXTURE, "-o", output, "--device", "cuda"],  # CUDA is hidden from the tests
         r"^error: --device cuda, but CUDA is not available here \(use cpu or auto\)$"),
        ([run_dir, FIXTURE, "-o", output, "--device", "gpu"], r"^error: --device gpu: not a device"),
    ]:
        status, _, err = call("scripts/predict", args, capsys)
        assert status == 1 and len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert output.read_text() == "previous\n"  # nothing half-written over the old output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_no_cuda_is_refused_naming_the_device_as_the_user_gave_it(run_dir, tmp_path, capsys, monkeypatch):
    from docre.utils import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    unavailable = "but CUDA is not available here (use cpu or auto)"
    status, _, err = call("evaluate", [run_dir, "--device", "cuda"], capsys)
    assert (status, err.strip()) == (1, f"error: --device cuda, {unavailable}")
    status, _, err = call("scripts/predict", [run_dir, FIXTURE, "-o", tmp_path / "out.jsonl", "--device", "cuda"], capsys)
    assert (status, err.strip()) == (1, f"error: --device cuda, {unavailable}")
    with pytest.raises(DocreError) as error:
        Predictor.from_pretrained(run_dir, device="cuda")
    assert str(error.value) == f"device='cuda', {unavailable}"
    with pytest.raises(DocreError) as error:
        resolve_device("cuda")  # training's config key
    assert str(error.value) == f"train.device=cuda, {unavailable}"


def test_a_missing_run_beside_others_is_a_missing_folder_not_a_hub_id(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # "runs/nosuch" is also shaped like a Hub id ORG/NAME
    status, _, err = call("scripts/predict", ["runs/nosuch", FIXTURE, "-o", "out.jsonl"], capsys)
    assert status == 1 and err.strip() == ("error: runs/nosuch: model directory not found "
                                           "(no run directory or exported model folder there)")


# ---------------------------------------------------------------------------------------------- evaluate.py
def test_evaluate_refuses_unlabelled_split_and_its_suggested_command_works(run_dir, fixture_docs, tmp_path, capsys):
    unlabelled = tmp_path / "test.json"
    unlabelled.write_text(json.dumps([{k: v for k, v in d.items() if k != "labels"} for d in fixture_docs]))
    status, _, err = call("evaluate", [run_dir, "--data", f"{unlabelled}[1:]"], capsys)
    assert status == 1
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: ") and "cannot be scored locally" in message and "CodaLab" in message
    command = re.search(r"with: (python scripts/predict\.py .*? -o result\.zip)", message).group(1)
    assert command == f"python scripts/predict.py {run_dir} {unlabelled}[1:] -o result.zip"
    args = shlex.split(command)[1:]
    args[-1] = str(tmp_path / "result.zip")
    result = run(args)  # the real entry point, as a user runs it
    assert result.returncode == 0, result.stderr[-2000:]
    with zipfile.ZipFile(tmp_path / "result.zip") as archive:
        rows = json.loads(archive.read("result.json"))
    logged = json.loads((run_dir / "dev_predictions.json").read_text())
    assert row_set(rows) == {r for r in row_set(logged) if r[0] != fixture_docs[0]["title"]}
    assert_valid_leaderboard(rows, fixture_docs[1:], json.loads((run_dir / "rel2id.json").read_text()))


# ---------------------------------------------------------------------------------------------- export
@pytest.fixture
def exported(run_dir, tmp_path, capsys) -> Path:
    out = tmp_path / "model"
    status, printed, err = call("scripts/export", [run_dir, out], capsys)
    assert status == 0, err
    assert printed.startswith(f"{out}: README.md, config.yaml, encoder/config.json")
    return out


def test_export_writes_a_self_contained_folder_with_a_card(exported, run_dir):
    files = sorted(str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file())
    assert {"README.md", "config.yaml", "model.safetensors", "rel2id.json", "rel_info.json", "results.json",
            "encoder/config.json", "encoder/tokenizer_config.json"} <= set(files)
    assert not (exported.parent / "model.tmp").exists()
    from safetensors.torch import load_file

    original, copied = load_file(str(run_dir / "best.safetensors")), load_file(str(exported / "model.safetensors"))
    assert original.keys() == copied.keys() and all(torch.equal(original[k], copied[k]) for k in original)
    card = (exported / "README.md").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert card.startswith("---\nlibrary_name: docre\n")
    dev = results["dev"]
    assert f"| dev | {dev['precision'] * 100:.2f} | {dev['recall'] * 100:.2f} | {dev['f1'] * 100:.2f} |" in card
    assert f"| test | {results['test']['precision'] * 100:.2f} |" in card
    assert "docred_tiny.json" in card and "`atgl` loss (alpha=16.5)" in card
    assert "at most 4 relations per entity pair." in card  # the run's eval.top_k, which ATGL's decode keeps
    assert json.loads((exported / "rel2id.json").read_text()) == json.loads((run_dir / "rel2id.json").read_text())
    # an ATGL run at a fixed alpha tunes nothing on dev (its decode.json is {}), so the export has no
    # decode.json, and docs/predict.md says so
    assert json.loads((run_dir / "decode.json").read_text()) == {} and "decode.json" not in files
    assert "`decode.json` (when the run tuned parameters on dev)" in " ".join((ROOT / "docs/predict.md").read_text().split())


def test_exported_folder_loads_offline_and_predicts_identically(exported, backbone, predictor, fixture_docs, redocred_docs,
                                                                redocred_triples):
    expected = predictor.predict(fixture_docs) + redocred_triples
    hidden = backbone.with_name("backbone_hidden")
    backbone.rename(hidden)  # the original backbone is gone: only the exported folder remains
    try:
        loaded = Predictor.from_pretrained(exported, device="cpu")
        assert loaded.predict(fixture_docs + redocred_docs) == expected
        card = (exported / "README.md").read_text()
        snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace("path/to/this/folder", str(exported))
        exec(compile(snippet, "README.md", "exec"), {})  # the card's example runs as written
    finally:
        hidden.rename(backbone)


def test_an_exported_folder_is_named_as_such_by_train_resume(exported, capsys):
    status, _, err = call("train", ["--resume", exported], capsys)  # it has a config.yaml and results.json too
    assert (status, err.strip()) == (
        1, f"error: {exported}: an exported model (scripts/export.py), not a run directory; it cannot be resumed")


def test_export_carries_tuned_decode_parameters_and_refuses_to_overwrite(run_dir, exported, tmp_path):
    from docre.export import export_model

    with pytest.raises(DocreError, match="exists and is not empty"):
        export_model(run_dir, exported)
    with pytest.raises(DocreError, match="already an exported model folder"):
        export_model(exported, tmp_path / "again")
    tuned = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (tuned / "decode.json").write_text(json.dumps({"alpha": 3.0}))  # stands in for a loss's tuned decision parameter
    out = export_model(tuned, tmp_path / "tuned_model")
    assert json.loads((out / "decode.json").read_text()) == {"alpha": 3.0}
    assert "alpha=3.0" in (out / "README.md").read_text()
    assert Predictor.from_pretrained(out, device="cpu").loss_fn.alpha == 3.0


def test_read_documents_takes_json_lists_slices_gzip_and_json_lines(fixture_docs, tmp_path):
    import gzip

    assert read_documents(FIXTURE) == fixture_docs
    assert read_documents(f"{FIXTURE}[1:]") == fixture_docs[1:]
    (tmp_path / "docs.json.gz").write_bytes(gzip.compress(FIXTURE.read_bytes()))
    assert read_documents(tmp_path / "docs.json.gz", "docred") == fixture_docs
    raw = {"text": "Alpha works for Beta.", "entities": [{"mentions": [[0, 5]]}, {"mentions": [[16, 20]]}]}
    lines = tmp_path / "mixed.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(d) for d in [fixture_docs[0], raw]).encode() + b"\n")
    docs = read_documents(lines)
    assert docs[0] == fixture_docs[0] and docs[1]["sents"] == [["Alpha", "works", "for", "Beta", "."]]
    with pytest.raises(DocreError, match=r"document 1: raw text \(a 'text' field\) given with --format docred"):
        read_documents(lines, "docred")
    with pytest.raises(DocreError, match=r"--format 'xml'"):
        read_documents(lines, "xml")
    text = tmp_path / "n.txt"
    text.write_text("Alpha works for Beta.")
    with pytest.raises(DocreError, match=rf"^{re.escape(str(text))}: a \.txt file is plain text, not --format docred$"):
        read_documents(text, "docred")
    with pytest.raises(DocreError, match=r"^input: documents must be a list, got dict$"):  # one document, not a list of one
        prepare_documents({"title": "x"})


# ---------------------------------------------------------------------------------------------- evidence
def test_dreeam_run_carries_the_same_evidence_through_every_path(backbone, tmp_path, fixture_docs, capsys):
    """A DREEAM run: the trainer's predictions, the Predictor's rows and triples, result.zip and
    evaluate.py all give the same evidence sentences, and the evidence scores of the official scorer."""
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={backbone}", f"output_dir={tmp_path}",
                                                    "train.max_steps=3", "model.name=dreeam", "model.evidence_threshold=0.3"])
    run_dir = Path(train(cfg)["run_dir"])
    logged = json.loads((run_dir / "dev_predictions.json").read_text())
    predictor = Predictor.from_pretrained(run_dir, device="cpu")
    rows = predictor.leaderboard_rows(fixture_docs)
    evidence = {(r["title"], r["h_idx"], r["t_idx"], r["r"]): r["evidence"] for r in rows}
    assert evidence == {(r["title"], r["h_idx"], r["t_idx"], r["r"]): r["evidence"] for r in logged}
    assert any(evidence.values()) and all(e == sorted(set(e)) for e in evidence.values())
    assert all(0 <= s < len(d["sents"]) for d in fixture_docs for r in rows if r["title"] == d["title"] for s in r["evidence"])
    triples = predictor.predict(fixture_docs)
    by_triple = {(d["title"], t["h_idx"], t["t_idx"], t["r"]): t["evidence"] for d, ts in zip(fixture_docs, triples) for t in ts}
    assert by_triple == evidence
    status, _, _ = call("scripts/predict", [run_dir, FIXTURE, "-o", tmp_path / "result.zip"], capsys)
    assert status == 0
    with zipfile.ZipFile(tmp_path / "result.zip") as archive:
        zipped = json.loads(archive.read("result.json"))
    assert {(r["title"], r["h_idx"], r["t_idx"], r["r"]): r["evidence"] for r in zipped} == evidence
    status, out, _ = call("evaluate", [run_dir, "--data", FIXTURE, "--json"], capsys)
    evaluated = json.loads(out.strip().splitlines()[-1])
    ours = docred_scores(rows, fixture_docs, fixture_docs)
    assert status == 0 and ours["num_evidence_predicted"] > 0
    for key in ("evidence_precision", "evidence_recall", "evidence_f1", "num_evidence_correct"):
        assert ours[key] == evaluated[key], key
    assert "Evi F1" in out


@pytest.mark.parametrize("model, loss", [("docunet", "balanced_softmax"), ("kd_docre", "afl")])
def test_a_trained_run_of_each_other_model_predicts_what_training_scored(model, loss, backbone, tmp_path, fixture_docs):
    """The run directory rebuilds the model it trained (its own modules' weights included): the
    Predictor's rows equal the trainer's dev predictions."""
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"model.backbone={backbone}", f"output_dir={tmp_path}",
                                                    "train.max_steps=3", f"model.name={model}", f"loss.name={loss}"])
    run_dir = Path(train(cfg)["run_dir"])
    logged = json.loads((run_dir / "dev_predictions.json").read_text())
    predictor = Predictor.from_pretrained(run_dir, device="cpu")
    assert type(predictor.model).__name__ == {"docunet": "DocuNet", "kd_docre": "KDDocRE"}[model]
    assert logged and row_set(predictor.leaderboard_rows(fixture_docs)) == row_set(logged)


def test_isf_needs_a_model_that_predicts_evidence(run_dir, capsys):
    status, _, err = call("evaluate", [run_dir, "--data", FIXTURE, "--isf"], capsys)
    assert status == 1
    assert err.strip().splitlines()[-1] == (f"error: {run_dir}: --isf needs a model that predicts evidence "
                                            "(model.name=dreeam), not atlop")
