"""What an evidence model (DREEAM) needs from featurisation: each sentence's word-piece span
(`sent_pos`) and each gold fact's evidence sentences, also through the feature cache."""

import json
import shutil
from itertools import pairwise

import numpy as np
import pytest

import docre.data
from docre.data import cache, load_split
from docre.data.feature import featurize, probe_tokenizer
from tests.conftest import FIXTURES


def fixture_docs() -> list[dict]:
    return json.loads((FIXTURES / "docred_tiny.json").read_text())


def check_sentence_spans(docs, features, tokenizer):
    """sent_pos tiles the document tokens in order, from after the start tokens to before the end
    tokens, one span per sentence."""
    info = probe_tokenizer(tokenizer, "*")
    for doc, feature in zip(docs, features):
        spans = feature.sent_pos.tolist()
        assert feature.sent_pos.dtype == np.int32 and len(spans) == len(doc["sents"])
        assert spans[0][0] == len(info.start_ids)
        assert spans[-1][1] == len(feature.input_ids) - len(info.end_ids)
        assert all(start <= end for start, end in spans)
        assert all(a[1] == b[0] for a, b in pairwise(spans))


def check_mentions_inside_their_sentences(docs, full, features):
    """Each kept mention's opening marker lies inside its own sentence's span (`full`: the same
    documents featurised without a cap, which says which position belongs to which mention)."""
    for doc, whole, feature in zip(docs, full, features):
        for entity, positions, kept in zip(doc["vertexSet"], whole.entity_pos, feature.entity_pos):
            assert len(positions) == len(entity)
            for mention, p in zip(entity, positions):
                if p in kept:
                    start, end = feature.sent_pos[mention["sent_id"]].tolist()
                    assert start <= p < end, (doc["title"], mention)


def test_sentence_spans_tile_the_document_and_hold_their_mentions(minilm_tokenizer, rel2id, redocred_dev):
    docs = redocred_dev[:60]
    features, _ = featurize(docs, minilm_tokenizer, rel2id, "*", 0)
    check_sentence_spans(docs, features, minilm_tokenizer)
    check_mentions_inside_their_sentences(docs, features, features)
    info = probe_tokenizer(minilm_tokenizer, "*")
    for doc, feature in zip(docs, features):
        for positions in feature.entity_pos:
            for p in positions:
                assert feature.input_ids[p : p + len(info.marker_ids)].tolist() == info.marker_ids
        # a sentence's span holds exactly its words' pieces and markers: featurise the sentence alone
        for s in {0, len(doc["sents"]) - 1}:
            entities = [[dict(m, sent_id=0) for m in entity if m["sent_id"] == s] for entity in doc["vertexSet"]]
            alone = {"title": "s", "sents": [doc["sents"][s]], "vertexSet": [e for e in entities if e]}
            if not alone["vertexSet"]:
                continue
            piece = featurize([alone], minilm_tokenizer, rel2id, "*", 0)[0][0]
            start, end = feature.sent_pos[s].tolist()
            body = piece.input_ids[len(info.start_ids) : len(piece.input_ids) - len(info.end_ids)]
            assert feature.input_ids[start:end].tolist() == body.tolist()


def test_sentence_spans_under_truncation(minilm_tokenizer, rel2id, redocred_dev):
    docs = redocred_dev[:30]
    full, _ = featurize(docs, minilm_tokenizer, rel2id, "*", 0)
    features, report = featurize(docs, minilm_tokenizer, rel2id, "*", 128)
    assert report  # something was cut
    check_sentence_spans(docs, features, minilm_tokenizer)
    check_mentions_inside_their_sentences(docs, full, features)
    cut = [f for f in features if any(start == end for start, end in f.sent_pos.tolist())]
    assert cut  # sentences wholly past the cut are empty, at the end
    for feature in cut:
        lengths = (feature.sent_pos[:, 1] - feature.sent_pos[:, 0]).tolist()
        first_empty = lengths.index(0)
        assert all(n == 0 for n in lengths[first_empty:])


def test_evidence_is_aligned_with_the_label_rows(tiny_tokenizer, rel2id):
    docs = fixture_docs()
    docs[1]["labels"].append(dict(docs[1]["labels"][0], evidence=[2]))  # a repeated label: evidence merged
    features, _ = featurize(docs, tiny_tokenizer, rel2id, "*", 1024)
    for doc, feature in zip(docs, features):
        assert len(feature.evidence) == len(feature.labels)
        expected = {}
        for label in doc["labels"]:
            h, t = label["h"], label["t"]
            pair = next(i for i, (a, b) in enumerate(feature.hts.tolist()) if (a, b) == (h, t))
            expected.setdefault((pair, rel2id[label["r"]]), set()).update(label["evidence"])
        assert {tuple(row): ids for row, ids in zip(feature.labels.tolist(), feature.evidence)} == {
            fact: sorted(ids) for fact, ids in expected.items()}
    first = docs[1]["labels"][0]
    assert sorted(set(first["evidence"]) | {2}) in features[1].evidence


def test_unlabelled_documents_have_no_evidence(tiny_tokenizer, rel2id):
    docs = [{k: v for k, v in doc.items() if k != "labels"} for doc in fixture_docs()]
    features, _ = featurize(docs, tiny_tokenizer, rel2id, "*", 1024)
    assert all(f.labels is None and f.evidence is None and f.sent_pos is not None for f in features)


class TestCache:
    def load(self, tmp_path, tokenizer, rel2id, max_seq_length=1024):
        return load_split("x", "docred", "docs.json", str(tmp_path), tokenizer, rel2id, "*", max_seq_length,
                          str(tmp_path / "cache"))

    @pytest.mark.parametrize("labelled", [True, False])
    def test_sentence_spans_and_evidence_round_trip(self, tmp_path, tiny_tokenizer, rel2id, monkeypatch, labelled):
        docs = fixture_docs()
        docs[1]["labels"][2]["evidence"] = []  # a fact without evidence between two with
        if not labelled:
            docs[0].pop("labels")
        (tmp_path / "docs.json").write_text(json.dumps(docs))
        first = self.load(tmp_path, tiny_tokenizer, rel2id, max_seq_length=40)
        monkeypatch.setattr(docre.data, "featurize", lambda *a, **k: pytest.fail("cache miss"))
        second = self.load(tmp_path, tiny_tokenizer, rel2id, max_seq_length=40)
        for a, b in zip(first.features, second.features):
            assert np.array_equal(a.sent_pos, b.sent_pos) and b.sent_pos.shape == (len(b.sent_pos), 2)
            assert a.evidence == b.evidence
            assert (b.evidence is None) == (b.labels is None)
        assert second.features[0].evidence == ([[0], [1]] if labelled else None)
        assert [] in second.features[1].evidence

    def test_an_entry_of_the_old_format_is_not_read(self, tmp_path, tiny_tokenizer, rel2id, monkeypatch):
        shutil.copy(FIXTURES / "docred_tiny.json", tmp_path / "docs.json")
        self.load(tmp_path, tiny_tokenizer, rel2id)
        [entry] = (tmp_path / "cache").glob("*.safetensors")
        # the format is part of the key: a cache written by another format is never looked up
        monkeypatch.setattr(cache, "FORMAT", cache.FORMAT - 1)
        calls = []
        real = docre.data.featurize
        monkeypatch.setattr(docre.data, "featurize", lambda *a, **k: calls.append(1) or real(*a, **k))
        self.load(tmp_path, tiny_tokenizer, rel2id)
        assert calls == [1]
        # and an entry without the new arrays, whatever its name, is rebuilt rather than trusted
        from safetensors.numpy import load_file, save_file

        arrays = load_file(str(entry))
        from safetensors import safe_open

        with safe_open(str(entry), framework="np") as handle:
            metadata = handle.metadata()
        save_file({k: v for k, v in arrays.items() if k not in ("sent_pos", "sents_per_doc", "evidence", "evidence_per_fact")},
                  str(entry), metadata=metadata)
        assert cache.load_features(entry) is None
