"""Predict relations with a trained model (a run directory or a folder from scripts/export.py).

    python scripts/predict.py MODEL INPUT -o OUTPUT [--format auto|docred|text] [--top-k K]
                              [--batch-size N] [--device auto|cpu|cuda]

INPUT: a DocRED-format JSON list (plain or .gz; labels are ignored; FILE[a:b] takes a slice) or
JSON lines, one document per line, DocRED-format or raw text {"text", "entities": [{"name"?,
"type"?, "mentions": [[char_start, char_end], ...]}], "title"?}. See docs/predict.md.

OUTPUT, by its extension:
  *.jsonl  one line per document: {"title", "triples": [{h_idx, h_name, t_idx, t_name, r, r_name,
           score, h_sents, t_sents}, ...]} (raw-text documents add "sent_spans")
  *.json   the leaderboard list [{"title", "h_idx", "t_idx", "r", "evidence": []}]
  *.zip    a CodaLab submission: that list as result.json inside the zip
"""

if __name__ == "__main__":
    from docre.cli.predict import run

    run()
