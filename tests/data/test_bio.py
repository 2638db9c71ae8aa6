"""CDR/GDA reader (EoG format): the hand-made fixture read into exact DocRED-format documents,
parity of the features with ATLOP's own reading of the real CDR files (its `prepro.py`), counts of
the real files, and one test per malformed-input error."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from docre.data import FIXED_RELATIONS, READERS, load_rel2id, load_split, read_split
from docre.data.bio import read_cdr, read_gda
from docre.data.feature import featurize, probe_tokenizer
from docre.errors import DocreError
from tests.conftest import FIXTURES, SHARED

CDR_TINY = FIXTURES / "cdr_tiny.data"
CDR = SHARED / "cdr"
GDA = SHARED / "gda"
needs_shared = pytest.mark.skipif(not (CDR / "train_filter.data.gz").is_file(),
                                  reason="the shared data folder beside the repository has no CDR files")


def test_registered_with_fixed_relations():
    assert READERS["cdr"] is read_cdr and READERS["gda"] is read_gda
    assert load_rel2id("cdr", "data/docred/rel2id.json") == {"Na": 0, "CID": 1} == FIXED_RELATIONS["cdr"]
    assert load_rel2id("gda", "") == {"Na": 0, "GDA": 1}


def test_fixture_reads_into_exact_documents():
    docs = read_cdr(CDR_TINY, slice(None), None)
    first, second, third = docs
    assert [d["title"] for d in docs] == ["1001", "1002", "1003"]
    assert first["sents"] == [["Aspirin", "caused", "headache", "."],
                              ["Later", ",", "headache", "and", "nausea", "followed", "aspirin", "use", "."]]
    # document offsets 6 and 10 are words 2 and 6 of sentence 1 (sentence 0 has 4 words)
    assert first["entity_ids"] == ["C001", "D001", "D002"]
    assert first["vertexSet"] == [
        [{"name": "Aspirin", "sent_id": 0, "pos": [0, 1], "type": "Chemical"},
         {"name": "aspirin", "sent_id": 1, "pos": [6, 7], "type": "Chemical"}],
        [{"name": "headache", "sent_id": 0, "pos": [2, 3], "type": "Disease"},
         {"name": "headache", "sent_id": 1, "pos": [2, 3], "type": "Disease"}],
        [{"name": "nausea", "sent_id": 1, "pos": [4, 5], "type": "Disease"}],
    ]
    # the second block lists nausea first but is R2L: entity 2 (aspirin) is the head
    assert first["pairs"] == [[0, 1], [0, 2]]
    assert first["pair_cross"] == [False, False]
    assert first["labels"] == [{"h": 0, "t": 1, "r": "CID"}]
    # R2L again: lithium (entity 2 of the block, entity 1 here) heads; pain appears only in a
    # not_include pair: it is an entity (its mentions get markers) but no candidate pair
    assert second["entity_ids"] == ["D003", "C002", "D004"]
    assert second["vertexSet"][1] == [{"name": "Lithium carbonate", "sent_id": 0, "pos": [0, 2], "type": "Chemical"}]
    assert second["vertexSet"][2] == [{"name": "pain", "sent_id": 2, "pos": [1, 2], "type": "Disease"}]
    assert second["pairs"] == [[1, 0]] and second["pair_cross"] == [True]
    assert second["labels"] == [{"h": 1, "t": 0, "r": "CID"}]
    assert third["pairs"] == [[0, 1]] and third["labels"] == []


def test_gda_reader_takes_gda_labels_and_rejects_cdr_ones(tmp_path):
    path = tmp_path / "gda.data"
    path.write_text(CDR_TINY.read_text().replace("1:CID:2", "1:GDA:2"))
    assert [lab["r"] for doc in read_gda(path, slice(None), None) for lab in doc["labels"]] == ["GDA", "GDA"]
    with pytest.raises(DocreError, match="label: '1:CID:2' is not 1:GDA:2, 1:NR:2 or not_include"):
        read_gda(CDR_TINY, slice(None), None)


def test_features_use_the_listed_pairs(tiny_tokenizer):
    docs = read_cdr(CDR_TINY, slice(None), None)
    features, report = featurize(docs, tiny_tokenizer, FIXED_RELATIONS["cdr"], "*", 1024)
    assert report == ""
    marker = tiny_tokenizer.convert_tokens_to_ids("*")
    for doc, feature in zip(docs, features):
        assert feature.hts.tolist() == doc["pairs"]
        positives = {(lab["h"], lab["t"]) for lab in doc["labels"]}
        assert {tuple(feature.hts[p]) for p, r in feature.labels.tolist()} == positives
        assert all(r == 1 for _, r in feature.labels.tolist())
        ids = feature.input_ids.tolist()
        mentions = sum(len(e) for e in doc["vertexSet"])
        assert ids.count(marker) == 2 * mentions  # every mention, also of not_include-only entities
        assert all(ids[p] == marker for positions in feature.entity_pos for p in positions)


def test_slices_and_gzip(tmp_path):
    (tmp_path / "x.data.gz").write_bytes(gzip.compress(CDR_TINY.read_bytes()))
    (tmp_path / "blank.data").write_text("\n" + CDR_TINY.read_text().replace("\n", "\n\n") + "\n")
    whole = read_split("cdr", "x.data.gz", str(tmp_path), None)[2]
    assert [d["title"] for d in read_split("cdr", "x.data.gz[1:]", str(tmp_path), None)[2]] == ["1002", "1003"]
    assert read_split("cdr", "blank.data", str(tmp_path), None)[2] == whole  # blank lines are ignored
    with pytest.raises(DocreError, match=r"document 0 \(line 2, PMID 1001\)"):  # numbering counts the blank lines
        read_split("cdr", "blank.data[1:]", str(tmp_path), {"Na": 0, "GDA": 1})  # the whole file is validated


def test_document_without_candidate_pairs_is_skipped(tmp_path, docre_warnings):
    lines = CDR_TINY.read_text().splitlines()
    lines.append("1004\tNo entities here .")  # no pair block at all
    fields = lines[2].split("\t")
    fields[2] = "not_include"  # the only pair of 1003 is skipped
    lines[2] = "\t".join(fields)
    path = tmp_path / "skip.data"
    path.write_text("\n".join(lines))
    docs = read_cdr(path, slice(None), None)
    assert [d["title"] for d in docs] == ["1001", "1002"]
    assert "2 documents without candidate pairs skipped (as ATLOP does): PMID 1003, 1004" in docre_warnings.text


# ------------------------------------------------------------------------------------ errors
def edit(line: int, field: int, value: str):
    """A change to the fixture: set tab field `field` of line `line` (0-based) to `value`."""

    def apply(lines):
        fields = lines[line].split("\t")
        fields[field] = value
        lines[line] = "\t".join(fields)

    return apply


def replace_line(line: int, text: str):
    def apply(lines):
        lines[line] = text

    return apply


# fields of the first pair block: 2 label, 3 direction, 4 cross, 7-12 entity 1, 13-18 entity 2
ERRORS = [
    (replace_line(1, "1002\ttext\t1:CID:2"),
     r"document 1 \(line 2\): expected PMID, text and 17 fields per candidate pair, got 3"),
    (edit(0, 0, " "), r"document 0 \(line 1\): PMID: empty"),
    (edit(0, 1, "Aspirin caused  headache .|x"), r"document 0 \(line 1, PMID 1001\): text: sentence 0 has an empty token"),
    (edit(0, 1, "Aspirin caused headache .||x"), r"PMID 1001\): text: sentence 1 has an empty token"),
    (edit(0, 2, "1:CDI:2"), r"PMID 1001\): pair 0 \(fields 2-18\): label: '1:CDI:2' is not 1:CID:2, 1:NR:2 or not_include"),
    (edit(0, 20, "LR"), r"PMID 1001\): pair 1 \(fields 19-35\): direction: 'LR' is not L2R or R2L"),
    (edit(0, 4, "INTER"), r"pair 0 \(fields 2-18\): cross: 'INTER' is not CROSS or NON-CROSS"),
    (edit(0, 7, ""), r"pair 0 \(fields 2-18\): entity 1 id: empty"),
    (edit(2, 15, ""), r"document 2 \(line 3, PMID 1003\): pair 0 \(fields 2-18\): entity 2 \(D005\) type: empty"),
    (edit(0, 10, "0:x"), r"entity 1 \(C001\) start offsets: '0:x' is not ':'-separated integers"),
    (edit(0, 11, "1"),
     r"entity 1 \(C001\): 2 mention names, 2 start offsets, 1 end offset and 2 sentence ids; the counts must agree"),
    (edit(0, 18, ""), r"entity 2 \(D001\) sentence ids: '' is not ':'-separated integers"),
    (edit(0, 11, "1:14"), r"entity 1 \(C001\) offsets: mention 1 \[10, 14\) is not a token span of the document \(13 tokens\)"),
    (edit(0, 11, "0:11"), r"entity 1 \(C001\) offsets: mention 0 \[0, 0\) is not a token span"),
    (edit(0, 11, "1:11"), None),  # unchanged value: no error (checks the edit helper)
    (edit(0, 16, "3:6"), r"entity 2 \(D001\) offsets: mention 0 \[3, 3\) is not a token span"),
    (edit(0, 17, "5:7"),
     r"entity 2 \(D001\) offsets: mention 0 \[2, 5\) crosses from sentence 0 into sentence 1; a mention must lie inside one "
     r"sentence"),
    (edit(0, 12, "0:0"), r"entity 1 \(C001\) sentence ids: mention 1 \[10, 11\) lies in sentence 1, not 0"),
    (edit(0, 31, "Aspirin|Aspirin"),
     r"pair 1 \(fields 19-35\): entity 2 \(C001\) mention names: differ from an earlier pair naming the same entity"),
    (edit(0, 24, "C001"), r"pair 1 \(fields 19-35\): entity 1 \(C001\) mention names: differ"),
    (edit(2, 13, "C003"), r"pair 0 \(fields 2-18\): entity 2 \(C003\) mention names: differ"),
]


@pytest.mark.parametrize("change, message", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_malformed_lines_name_file_document_and_field(tmp_path, change, message):
    lines = CDR_TINY.read_text().splitlines()
    change(lines)
    path = tmp_path / "bad.data"
    path.write_text("\n".join(lines) + "\n")
    if message is None:
        assert len(read_cdr(path, slice(None), None)) == 3
        return
    with pytest.raises(DocreError, match=message) as error:
        read_cdr(path, slice(None), None)
    assert str(error.value).startswith(f"{path}: document ")
    assert "\n" not in str(error.value)


def test_same_entity_on_both_sides(tmp_path):
    lines = CDR_TINY.read_text().splitlines()
    fields = lines[2].split("\t")
    fields[13:19] = fields[7:13]
    lines[2] = "\t".join(fields)
    (tmp_path / "bad.data").write_text("\n".join(lines))
    with pytest.raises(DocreError, match=r"PMID 1003\): pair 0 \(fields 2-18\): entity 2 id: C003 is also entity 1"):
        read_cdr(tmp_path / "bad.data", slice(None), None)


def test_repeated_pair(tmp_path):
    lines = CDR_TINY.read_text().splitlines()
    fields = lines[0].split("\t")
    lines[0] = "\t".join(fields + fields[2:19])  # pair 0 again as pair 2
    (tmp_path / "bad.data").write_text("\n".join(lines))
    with pytest.raises(DocreError, match=r"pair 2 \(fields 36-52\): pair \(C001, D001\) L2R repeats pair 0"):
        read_cdr(tmp_path / "bad.data", slice(None), None)
    # the same two entities in the other direction are a different candidate pair
    reverse = fields[2:19]
    reverse[1] = "R2L"
    lines[0] = "\t".join(fields + reverse)
    (tmp_path / "ok.data").write_text("\n".join(lines))
    assert read_cdr(tmp_path / "ok.data", slice(None), None)[0]["pairs"] == [[0, 1], [0, 2], [1, 0]]


def test_duplicate_pmid(tmp_path):
    lines = CDR_TINY.read_text().splitlines()
    lines[2] = "1001" + lines[2][4:]
    (tmp_path / "bad.data").write_text("\n".join(lines))
    with pytest.raises(DocreError, match=r"document 2 \(line 3, PMID 1001\): PMID: duplicate of document 0"):
        read_cdr(tmp_path / "bad.data", slice(None), None)


def test_relation_missing_from_a_given_map():
    message = r"document 0 \(line 1, PMID 1001\): label: relation 'CID' is not a relation of the relation map"
    with pytest.raises(DocreError, match=message):
        read_cdr(CDR_TINY, slice(None), {"Na": 0, "GDA": 1})
    assert len(read_cdr(CDR_TINY, slice(None), {"Na": 0, "CID": 1})) == 3


def test_unreadable_files(tmp_path):
    (tmp_path / "latin1.data").write_bytes(CDR_TINY.read_bytes().replace(b"Aspirin", b"Asp\xefrin"))
    (tmp_path / "empty.data").write_text("\n \n")
    for name, message in [("latin1.data", "not UTF-8 text"), ("empty.data", "file is empty"), ("missing.data", "file not found")]:
        with pytest.raises(DocreError, match=message):
            read_cdr(tmp_path / name, slice(None), None)


# ------------------------------------------------------------------------------------ real files
@needs_shared
@pytest.mark.parametrize("reader, path, docs, pairs, positives, inter_positives", [
    (read_cdr, CDR / "train_filter.data.gz", 500, 5240, 1038, 284),
    (read_cdr, CDR / "dev_filter.data.gz", 500, 5087, 1012, 246),
    (read_cdr, CDR / "test_filter.data.gz", 500, 5204, 1066, 319),
    (read_gda, GDA / "test.data.gz", 1000, 5222, 1502, 229),
])
def test_real_files(reader, path, docs, pairs, positives, inter_positives):
    """Counts of the shared files (the CID counts are BC5CDR's official 1,038 / 1,012 / 1,066), and
    the CROSS flag agrees with the intra-sentence definition used for DocRED: a pair is NON-CROSS
    exactly when some mention of the head and some mention of the tail share a sentence."""
    read = reader(path, slice(None), None)
    assert len(read) == docs
    assert sum(len(d["pairs"]) for d in read) == pairs
    assert sum(len(d["labels"]) for d in read) == positives
    cross = {(d["title"], h, t): c for d in read for (h, t), c in zip(d["pairs"], d["pair_cross"])}
    assert sum(cross[d["title"], lab["h"], lab["t"]] for d in read for lab in d["labels"]) == inter_positives
    for doc in read:
        sentences = [{m["sent_id"] for m in entity} for entity in doc["vertexSet"]]
        for (h, t), is_cross in zip(doc["pairs"], doc["pair_cross"]):
            assert is_cross == (not sentences[h] & sentences[t])
        for entity in doc["vertexSet"]:
            for m in entity:
                assert 0 <= m["pos"][0] < m["pos"][1] <= len(doc["sents"][m["sent_id"]])


def atlop_reading(line: str, tokenizer, relation: str):
    """ATLOP's read_cdr/read_gda (github.com/wzhouad/ATLOP, `prepro.py`) written out on one raw line: markers around the
    mentions of every entity of every block (not_include too), mention positions = the opening
    marker's index (+ the start tokens), pairs in file order with R2L swapping head and tail."""
    info = probe_tokenizer(tokenizer, "*")
    fields = line.rstrip("\n").split("\t")
    blocks = [fields[i : i + 17] for i in range(2, len(fields), 17)]
    spans = set()
    for block in blocks:
        for base in (5, 11):
            spans |= {(int(s), int(e)) for s, e in zip(block[base + 3].split(":"), block[base + 4].split(":"))}
    pieces, piece_of_token = [], {}
    for index, token in enumerate(w for sentence in fields[1].split("|") for w in sentence.split(" ")):
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(token))
        ids = info.marker_ids * sum(s == index for s, _ in spans) + ids + info.marker_ids * sum(e == index + 1 for _, e in spans)
        piece_of_token[index] = len(pieces)
        pieces += ids
    entity_pos, pairs = {}, {}
    for block in blocks:
        if block[0] == "not_include":
            continue
        first, second = (block[5:11], block[11:17]) if block[1] == "L2R" else (block[11:17], block[5:11])
        for entity in (first, second):
            entity_pos.setdefault(entity[0], [piece_of_token[int(s)] + len(info.start_ids) for s in entity[3].split(":")])
        pairs[first[0], second[0]] = block[0] == f"1:{relation}:2"
    return info.start_ids + pieces + info.end_ids, entity_pos, pairs


@needs_shared
@pytest.mark.parametrize("split", ["train_filter", "test_filter"])
def test_features_equal_atlops_reading_of_real_cdr(minilm_tokenizer, split):
    path = CDR / f"{split}.data.gz"
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()[:40]
    docs = read_cdr(path, slice(0, 40), None)
    features, _ = featurize(docs, minilm_tokenizer, FIXED_RELATIONS["cdr"], "*", 0)
    for line, doc, feature in zip(lines, docs, features):
        input_ids, entity_pos, pairs = atlop_reading(line, minilm_tokenizer, "CID")
        assert feature.input_ids.tolist() == input_ids, doc["title"]
        ids = doc["entity_ids"]
        for entity_id, positions in entity_pos.items():
            assert feature.entity_pos[ids.index(entity_id)] == positions
        positive_pairs = {int(p) for p, _ in feature.labels}
        got = {(ids[h], ids[t]): p in positive_pairs for p, (h, t) in enumerate(feature.hts.tolist())}
        assert got == pairs


def test_load_split_with_the_cache(tmp_path, tiny_tokenizer):
    first = load_split("dev", "cdr", str(CDR_TINY), "", tiny_tokenizer, FIXED_RELATIONS["cdr"], "*", 1024, str(tmp_path))
    second = load_split("dev", "cdr", str(CDR_TINY), "", tiny_tokenizer, FIXED_RELATIONS["cdr"], "*", 1024, str(tmp_path))
    assert len(list(Path(tmp_path).glob("*.safetensors"))) == 1
    for a, b in zip(first.features, second.features):
        assert np.array_equal(a.hts, b.hts) and np.array_equal(a.labels, b.labels) and a.entity_pos == b.entity_pos
