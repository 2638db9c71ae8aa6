"""DocRED reader and featurisation: batched tokenisation equals ATLOP's per-word loop, marker
positions, candidate pairs, labels, truncation, slices, gzip, and the feature cache."""

import copy
import gc
import gzip
import json
import shutil
import weakref

import numpy as np
import pytest

from docre.data import load_split, read_split
from docre.data.feature import featurize, probe_tokenizer
from docre.errors import DocreError
from tests.conftest import FIXTURES, REDOCRED_DEV


def reference_features(doc: dict, tokenizer, rel2id: dict, marker: str = "*", max_seq_length: int = 1024):
    """ATLOP's preprocessing (`read_docred` in github.com/wzhouad/ATLOP, `prepro.py`) written out
    plainly: one tokenizer call per word, markers before/after every mention, positions of the opening
    markers, all ordered pairs."""
    info = probe_tokenizer(tokenizer, marker)
    starts = {(m["sent_id"], m["pos"][0]) for e in doc["vertexSet"] for m in e}
    ends = {(m["sent_id"], m["pos"][1] - 1) for e in doc["vertexSet"] for m in e}
    pieces, word_maps = [], []
    for s, sent in enumerate(doc["sents"]):
        word_map = {}
        for w, word in enumerate(sent):
            ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))
            if (s, w) in starts:
                ids = info.marker_ids + ids
            if (s, w) in ends:
                ids = ids + info.marker_ids
            word_map[w] = len(pieces)
            pieces.extend(ids)
        word_maps.append(word_map)
    pieces = pieces[: max_seq_length - len(info.start_ids) - len(info.end_ids)]
    input_ids = info.start_ids + pieces + info.end_ids
    entity_pos = [
        [word_maps[m["sent_id"]][m["pos"][0]] + len(info.start_ids)
         for m in entity if word_maps[m["sent_id"]][m["pos"][0]] < len(pieces)]
        for entity in doc["vertexSet"]
    ]
    n = len(doc["vertexSet"])
    hts = [(h, t) for h in range(n) for t in range(n) if h != t]
    facts = {(hts.index((lab["h"], lab["t"])), rel2id[lab["r"]]) for lab in doc["labels"]}
    return input_ids, entity_pos, hts, facts


def assert_matches_reference(docs, tokenizer, rel2id, max_seq_length=1024):
    features, _ = featurize(docs, tokenizer, rel2id, "*", max_seq_length)
    for doc, feature in zip(docs, features):
        input_ids, entity_pos, hts, facts = reference_features(doc, tokenizer, rel2id, max_seq_length=max_seq_length)
        assert feature.input_ids.tolist() == input_ids, doc["title"]
        assert feature.entity_pos == entity_pos, doc["title"]
        assert [tuple(p) for p in feature.hts.tolist()] == hts
        assert {tuple(f) for f in feature.labels.tolist()} == facts


def fixture_docs() -> list[dict]:
    return json.loads((FIXTURES / "docred_tiny.json").read_text())


def test_batched_tokenisation_equals_per_word_on_real_documents(minilm_tokenizer, rel2id, redocred_dev):
    assert_matches_reference(redocred_dev[:60], minilm_tokenizer, rel2id)


def test_batched_tokenisation_equals_per_word_with_truncation(minilm_tokenizer, rel2id, redocred_dev):
    assert_matches_reference(redocred_dev[:20], minilm_tokenizer, rel2id, max_seq_length=100)


def test_batched_tokenisation_equals_per_word_for_byte_level_bpe(rel2id, redocred_dev):
    """RoBERTa-style tokenizers add a prefix space when a whole text is tokenised at once; per word
    they do not. The batched path must follow the per-word behaviour."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    texts = [" ".join(word for sent in doc["sents"] for word in sent) for doc in redocred_dev[:40]]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    backend = bpe._tokenizer
    backend.post_processor = processors.RobertaProcessing(("</s>", backend.token_to_id("</s>")),
                                                          ("<s>", backend.token_to_id("<s>")))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                        sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    assert_matches_reference(redocred_dev[:15], tokenizer, rel2id)


def test_markers_surround_every_mention(minilm_tokenizer, rel2id, redocred_dev):
    docs = redocred_dev[:30]
    features, _ = featurize(docs, minilm_tokenizer, rel2id, "*", 1024)
    marker = minilm_tokenizer.convert_tokens_to_ids("*")
    for doc, feature in zip(docs, features):
        ids = feature.input_ids.tolist()
        starts = {(m["sent_id"], m["pos"][0]) for e in doc["vertexSet"] for m in e}
        ends = {(m["sent_id"], m["pos"][1] - 1) for e in doc["vertexSet"] for m in e}
        words_marked = sum(word == "*" for sent in doc["sents"] for word in sent)  # literal '*' words in the text
        assert ids.count(marker) == len(starts) + len(ends) + words_marked
        for entity, positions in zip(doc["vertexSet"], feature.entity_pos):
            assert len(positions) == len(entity)
            assert all(ids[p] == marker for p in positions)
        assert ids[0] == minilm_tokenizer.cls_token_id and ids[-1] == minilm_tokenizer.sep_token_id


def test_pairs_and_labels_invariants(minilm_tokenizer, rel2id, redocred_dev):
    docs = redocred_dev[:100]
    features, _ = featurize(docs, minilm_tokenizer, rel2id, "*", 1024)
    for doc, feature in zip(docs, features):
        n = len(doc["vertexSet"])
        assert len(feature.hts) == n * (n - 1)
        assert len({tuple(p) for p in feature.hts.tolist()}) == n * (n - 1)
        assert (feature.hts[:, 0] != feature.hts[:, 1]).all()
        gold = {(lab["h"], lab["t"], rel2id[lab["r"]]) for lab in doc["labels"]}
        got = {(int(feature.hts[p, 0]), int(feature.hts[p, 1]), int(r)) for p, r in feature.labels}
        assert got == gold
        assert (feature.labels[:, 1] > 0).all()


def test_truncation_reports_counts(tiny_tokenizer, rel2id):
    docs = fixture_docs()
    features, report = featurize(docs, tiny_tokenizer, rel2id, "*", 40)
    full, _ = featurize(docs, tiny_tokenizer, rel2id, "*", 0)
    cut = [f for f, g in zip(features, full) if len(g.input_ids) > 40]
    assert cut and all(len(f.input_ids) == 40 for f in cut)
    lost_mentions = sum(sum(map(len, g.entity_pos)) - sum(map(len, f.entity_pos)) for f, g in zip(features, full))
    lost_pieces = sum(len(g.input_ids) - len(f.input_ids) for f, g in zip(features, full))
    assert report == (f"max_seq_length=40 cut {len(cut)} of 3 documents: {lost_pieces} word-pieces and {lost_mentions} "
                      "mentions dropped (model.max_seq_length=0 keeps whole documents)")
    assert all(p < 39 for f in features for e in f.entity_pos for p in e)
    assert featurize(docs, tiny_tokenizer, rel2id, "*", 0)[1] == ""


def test_slices_and_gzip_give_the_same_features(tmp_path, tiny_tokenizer, rel2id):
    plain = tmp_path / "docs.json"
    shutil.copy(FIXTURES / "docred_tiny.json", plain)
    (tmp_path / "docs.json.gz").write_bytes(gzip.compress(plain.read_bytes()))
    whole = load_split("x", "docred", "docs.json", str(tmp_path), tiny_tokenizer, rel2id, "*", 1024, "none")
    zipped = load_split("x", "docred", "docs.json.gz", str(tmp_path), tiny_tokenizer, rel2id, "*", 1024, "none")
    tail = load_split("x", "docred", "docs.json.gz[1:]", str(tmp_path), tiny_tokenizer, rel2id, "*", 1024, "none")
    head = read_split("docred", "docs.json[:2]", str(tmp_path), rel2id)[2]
    assert [d["title"] for d in head] == [d["title"] for d in whole.docs[:2]]
    assert [d["title"] for d in tail.docs] == [d["title"] for d in whole.docs[1:]]
    for a, b in zip(whole.features, zipped.features):
        assert np.array_equal(a.input_ids, b.input_ids) and a.entity_pos == b.entity_pos
    assert np.array_equal(tail.features[0].input_ids, whole.features[1].input_ids)


def test_loading_a_split_has_no_process_wide_effect_on_the_collector(tmp_path, tiny_tokenizer, rel2id):
    # the collector is paused while parsing and restored after; freezing (a process-wide effect) is
    # left to train(), which keeps its splits for the whole run
    shutil.copy(FIXTURES / "docred_tiny.json", tmp_path / "docs.json")
    before = gc.get_freeze_count()
    split = load_split("x", "docred", "docs.json", str(tmp_path), tiny_tokenizer, rel2id, "*", 1024, "none")
    assert gc.get_freeze_count() == before and gc.isenabled()
    (tmp_path / "bad.json").write_text('[{"title": "a"}]')
    with pytest.raises(DocreError, match="missing field 'sents'"):
        load_split("x", "docred", "bad.json", str(tmp_path), tiny_tokenizer, rel2id, "*", 1024, "none")
    assert gc.get_freeze_count() == before and gc.isenabled()
    assert split.features


def test_frozen_data_is_still_freed_when_dropped(tmp_path, tiny_tokenizer, rel2id):
    from docre.utils import freeze_loaded_data

    shutil.copy(FIXTURES / "docred_tiny.json", tmp_path / "docs.json")
    split = load_split("x", "docred", "docs.json", str(tmp_path), tiny_tokenizer, rel2id, "*", 1024, "none")
    before = gc.get_freeze_count()
    freeze_loaded_data()
    assert gc.get_freeze_count() - before >= len(split.docs)
    probe = weakref.ref(split.features[0])
    del split
    assert probe() is None
    gc.unfreeze()


def test_real_mini_split_sizes(minilm_tokenizer, rel2id):
    train = read_split("docred", "dev_revised.json.gz[:400]", str(REDOCRED_DEV.parent), rel2id)[2]
    dev = read_split("docred", "dev_revised.json.gz[400:]", str(REDOCRED_DEV.parent), rel2id)[2]
    assert len(train) == 400 and len(dev) == 100
    assert not {d["title"] for d in train} & {d["title"] for d in dev}


class TestCache:
    def load(self, tmp_path, tokenizer, rel2id, max_seq_length=1024):
        return load_split("x", "docred", "docs.json", str(tmp_path), tokenizer, rel2id, "*", max_seq_length,
                          str(tmp_path / "cache"))

    def test_hit_returns_identical_features_without_featurising(self, tmp_path, tiny_tokenizer, rel2id, monkeypatch):
        shutil.copy(FIXTURES / "docred_tiny.json", tmp_path / "docs.json")
        first = self.load(tmp_path, tiny_tokenizer, rel2id, max_seq_length=40)
        import docre.data

        monkeypatch.setattr(docre.data, "featurize", lambda *a, **k: pytest.fail("cache miss"))
        second = self.load(tmp_path, tiny_tokenizer, rel2id, max_seq_length=40)
        for a, b in zip(first.features, second.features):
            assert a.title == b.title and np.array_equal(a.input_ids, b.input_ids) and a.entity_pos == b.entity_pos
            assert np.array_equal(a.hts, b.hts) and np.array_equal(a.labels, b.labels)
        assert list((tmp_path / "cache").glob("*.safetensors"))

    def test_a_call_of_the_tokenizer_does_not_change_the_key(self, tmp_path, tiny_tokenizer, rel2id, monkeypatch):
        # A tokenizer.json may carry truncation and padding settings (MiniLM's: 128), which any call
        # of the tokenizer resets. They do not change docre's features, so they must not change the key:
        # they did, and every process missed the cache once per tokenizer.
        tokenizer = copy.deepcopy(tiny_tokenizer)
        tokenizer.backend_tokenizer.enable_truncation(16)
        tokenizer.backend_tokenizer.enable_padding(length=16)
        shutil.copy(FIXTURES / "docred_tiny.json", tmp_path / "docs.json")
        self.load(tmp_path, tokenizer, rel2id)  # featurising calls the tokenizer
        import docre.data

        monkeypatch.setattr(docre.data, "featurize", lambda *a, **k: pytest.fail("cache miss"))
        self.load(tmp_path, tokenizer, rel2id)

    def test_changed_content_or_settings_miss(self, tmp_path, tiny_tokenizer, rel2id, monkeypatch):
        import docre.data

        shutil.copy(FIXTURES / "docred_tiny.json", tmp_path / "docs.json")
        self.load(tmp_path, tiny_tokenizer, rel2id)
        calls = []
        real = docre.data.featurize
        monkeypatch.setattr(docre.data, "featurize", lambda *a, **k: calls.append(1) or real(*a, **k))
        self.load(tmp_path, tiny_tokenizer, rel2id, max_seq_length=40)  # other max length
        docs = fixture_docs()
        docs[0]["sents"][0][1] = "worked"
        (tmp_path / "docs.json").write_text(json.dumps(docs))  # same name, new content
        changed = self.load(tmp_path, tiny_tokenizer, rel2id)
        assert len(calls) == 2
        fresh = featurize(docs, tiny_tokenizer, rel2id, "*", 1024)[0][0]
        assert changed.features[0].input_ids.tolist() == fresh.input_ids.tolist()

    def test_unlabelled_documents_round_trip(self, tmp_path, tiny_tokenizer, rel2id):
        docs = fixture_docs()
        for doc in docs:
            del doc["labels"]
        (tmp_path / "docs.json").write_text(json.dumps(docs))
        first = self.load(tmp_path, tiny_tokenizer, rel2id)
        second = self.load(tmp_path, tiny_tokenizer, rel2id)
        assert all(f.labels is None for f in first.features + second.features)

    def test_corrupt_entry_is_rebuilt(self, tmp_path, tiny_tokenizer, rel2id):
        shutil.copy(FIXTURES / "docred_tiny.json", tmp_path / "docs.json")
        first = self.load(tmp_path, tiny_tokenizer, rel2id)
        for entry in (tmp_path / "cache").glob("*.safetensors"):
            entry.write_bytes(b"garbage")
        second = self.load(tmp_path, tiny_tokenizer, rel2id)
        assert [f.input_ids.tolist() for f in first.features] == [f.input_ids.tolist() for f in second.features]
