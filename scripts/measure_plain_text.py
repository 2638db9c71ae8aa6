"""The price of plain text (docs/predict.md#plain-text-against-gold-entities): a trained model on
DocRED-format documents turned back into plain text, against the same model given the gold entities.

    python scripts/measure_plain_text.py RUN_DIR [--data "data/redocred/test_revised.json.gz[:N]"]
                                         [--spacy-model en_core_web_sm] [--repeats 2] [--json OUT.json]

Each document's text is its words joined with one space, except none before closing punctuation and
after opening brackets (the words the HTML page of predictions joins that way: docre.html_view's
NO_SPACE_BEFORE / NO_SPACE_AFTER), and its sentences joined with one space; the gold mentions become
the character spans of their words. Then:

* mention detection: the spans docre found (spaCy, snapped to docre's words) against the gold mention
  spans, exact (same start and end) and overlapping (sharing a character);
* entity grouping: the share of gold entities whose set of mention spans is exactly one found
  entity's; also with docre's grouping rules run on the gold mentions and their gold types, which
  isolates the grouping from the recognizer;
* relations: the triples predicted from plain text matched to the gold facts by entity names (an
  entity is known by the set of its mentions' names after docre.data.entities.name_key; a predicted
  entity stands for every gold entity that shares a name with it; a triple is right when its
  relation holds between gold entities its head and tail stand for; precision over predicted
  triples, recall over gold facts), beside the same model with the gold entities, scored both the
  same way and by the official scorer;
* throughput: documents/s of `Predictor.predict_records` over all documents, preparing them included
  (for plain text: spaCy, snapping and grouping; also given apart), after a warm-up on two documents
  that also loads spaCy, and the peak resident memory of the whole process; each path in a process of
  its own (a process's peak cannot be reset), alternating `--repeats` times in this one run, the
  fastest repeat counting.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docre.utils import atomic_write_json


def to_plain_text(doc: dict) -> tuple[str, list[list[tuple[int, int]]]]:
    """(the document's text, per sentence the [start, end) character span of each word)."""
    from docre.html_view import NO_SPACE_AFTER, NO_SPACE_BEFORE

    text, spans, previous = "", [], None
    for sent in doc["sents"]:
        row = []
        for word in sent:
            if previous is not None and word not in NO_SPACE_BEFORE and previous not in NO_SPACE_AFTER:
                text += " "
            row.append((len(text), len(text) + len(word)))
            text += word
            previous = word
        spans.append(row)
    return text, spans


def gold_mentions(doc: dict, spans: list) -> list[set[tuple[int, int]]]:
    """Per gold entity, the character spans of its mentions."""
    return [{(spans[m["sent_id"]][m["pos"][0]][0], spans[m["sent_id"]][m["pos"][1] - 1][1]) for m in entity}
            for entity in doc["vertexSet"]]


def child(args) -> None:
    """One path in this process: predict every document, write the outputs and the figures as JSON."""
    from docre.predict import Predictor, read_documents

    docs = read_documents(args.data)
    predictor = Predictor.from_pretrained(args.run_dir, device="cpu", spacy_model=args.spacy_model)
    inputs = docs if args.child == "gold" else [{"title": d["title"], "text": to_plain_text(d)[0]} for d in docs]
    predictor.predict_records(inputs[:2])  # warm-up: lazy initialisation, and spaCy's loading for plain text
    started = time.perf_counter()
    prepared = predictor.prepare(inputs)  # plain text: spaCy, snapping, grouping; gold: the checks
    middle = time.perf_counter()
    records = predictor.predict_records(prepared, prepared=True)
    done = time.perf_counter()
    rows = predictor.leaderboard_rows(docs) if args.child == "gold" else []
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    atomic_write_json(Path(args.out), {
        "records": records, "rows": rows, "seconds": done - started, "prepare_seconds": middle - started,
        "documents": len(docs), "entities": sum(len(doc["vertexSet"]) for doc in prepared), "peak_rss_mib": round(peak)},
        indent=None)


def run_child(args, path: str, out: str) -> dict:
    command = [sys.executable, __file__, args.run_dir, "--data", args.data, "--spacy-model", args.spacy_model,
               "--child", path, "--out", out]
    subprocess.run(command, check=True, env=os.environ | {"TQDM_DISABLE": "1"})
    with open(out) as handle:
        return json.load(handle)


def prf(correct_predicted: int, predicted: int, correct_gold: int, gold: int) -> dict:
    precision = correct_predicted / predicted if predicted else 0.0
    recall = correct_gold / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(100 * precision, 2), "recall": round(100 * recall, 2), "f1": round(100 * f1, 2)}


def name_matched(docs: list[dict], records: list[dict], names_of) -> dict:
    """P/R/F1 of predicted triples against gold facts, entities matched by names (module docstring)."""
    from docre.data.entities import name_key

    predicted = right = found = gold_total = 0
    for doc, record in zip(docs, records):
        gold_names = [{name_key(m["name"]) for m in entity} for entity in doc["vertexSet"]]
        stands_for = [{g for g, names in enumerate(gold_names) if names & {name_key(n) for n in own}}
                      for own in names_of(doc, record)]
        facts = {(label["h"], label["t"], label["r"]) for label in doc["labels"]}
        matched = set()
        for triple in record["triples"]:
            hits = {(h, t, triple["r"]) for h in stands_for[triple["h_idx"]] for t in stands_for[triple["t_idx"]]} & facts
            predicted += 1
            right += bool(hits)
            matched |= hits
        found += len(matched)
        gold_total += len(facts)
    return prf(right, predicted, found, gold_total)


def mention_and_grouping(docs: list[dict], records: list[dict]) -> dict:
    """Mention detection P/R (exact, overlapping) and entities recovered exactly (found; gold mentions grouped)."""
    from docre.data.entities import group_mentions

    exact = overlap_found = overlap_gold = found_total = gold_total = 0
    entities_exact = entities_total = regrouped_exact = 0
    for doc, record in zip(docs, records):
        text, spans = to_plain_text(doc)
        gold = gold_mentions(doc, spans)
        gold_spans = set().union(*gold)
        found_entities = [{tuple(m) for m in entity["mentions"]} for entity in record["entities"]]
        found_spans = set().union(*found_entities) if found_entities else set()
        exact += len(gold_spans & found_spans)
        overlap_found += sum(any(a < d and c < b for c, d in gold_spans) for a, b in found_spans)
        overlap_gold += sum(any(a < d and c < b for c, d in found_spans) for a, b in gold_spans)
        found_total += len(found_spans)
        gold_total += len(gold_spans)
        entities_total += len(gold)
        entities_exact += sum(entity in found_entities for entity in gold)
        # docre's grouping rules on the gold mentions, with their gold types: the grouping alone
        mentions = sorted({(a, b, entity[0]["type"]) for entity, spans_ in zip(doc["vertexSet"], gold) for a, b in spans_})
        groups = group_mentions([text[a:b] for a, b, _ in mentions], [kind for _, _, kind in mentions])
        regrouped = [{mentions[m][:2] for m in group} for group in groups]
        regrouped_exact += sum(entity in regrouped for entity in gold)
    return {"mentions_exact": prf(exact, found_total, exact, gold_total),
            "mentions_overlap": prf(overlap_found, found_total, overlap_gold, gold_total),
            "found_mentions": found_total, "gold_mentions": gold_total, "gold_entities": entities_total,
            "entities_exact": round(100 * entities_exact / entities_total, 2),
            "gold_mentions_grouped_exact": round(100 * regrouped_exact / entities_total, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a trained run (or exported model folder)")
    parser.add_argument("--data", default="data/redocred/test_revised.json.gz", help="labelled DocRED-format documents")
    parser.add_argument("--spacy-model", default="en_core_web_sm", help="the spaCy pipeline that finds entities")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each path, alternating; the fastest counts")
    parser.add_argument("--child", choices=("gold", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    from docre.metrics import docred_scores
    from docre.predict import read_documents

    docs = read_documents(args.data)
    runs: dict[str, list[dict]] = {"gold": [], "plain": []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):  # alternating, so that a busy spell of the machine hits both paths
            for path in runs:
                runs[path].append(run_child(args, path, os.path.join(folder, f"{path}-{repeat}.json")))
    gold, plain = runs["gold"][0], runs["plain"][0]  # the outputs; every repeat predicts the same
    official = docred_scores(gold["rows"], docs, [])
    figures = {
        "run": args.run_dir, "data": args.data, "documents": len(docs), "spacy_model": args.spacy_model,
        **mention_and_grouping(docs, plain["records"]),
        "relations_gold_entities_official": {k: round(100 * official[k], 2) for k in ("precision", "recall", "f1")},
        "relations_gold_entities_by_names": name_matched(
            docs, gold["records"], lambda doc, _: [[m["name"] for m in entity] for entity in doc["vertexSet"]]),
        "relations_plain_text_by_names": name_matched(docs, plain["records"], found_names),
        "throughput": {path: throughput(results) for path, results in runs.items()},
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        atomic_write_json(Path(args.json), figures, indent=1)
    return 0


def throughput(results: list[dict]) -> dict:
    """The fastest of the repeats (the least disturbed by other work on the machine), the highest peak memory."""
    best = min(results, key=lambda result: result["seconds"])
    return {"documents_per_s": round(best["documents"] / best["seconds"], 2), "seconds": round(best["seconds"], 1),
            "of_which_preparing_s": round(best["prepare_seconds"], 1),
            "entities_per_document": round(best["entities"] / best["documents"], 2),
            "peak_rss_mib": max(result["peak_rss_mib"] for result in results),
            "seconds_of_each_repeat": [round(result["seconds"], 1) for result in results]}


def found_names(doc: dict, record: dict) -> list[list[str]]:
    """Per found entity, its mentions' texts."""
    text = to_plain_text(doc)[0]
    return [[text[a:b] for a, b in entity["mentions"]] for entity in record["entities"]]


if __name__ == "__main__":
    sys.exit(main())
