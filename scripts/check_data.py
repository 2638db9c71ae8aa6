"""Validate a dataset file with the reader training uses and print its statistics.

    python scripts/check_data.py FILE --format docred|cdr|gda [--rel2id FILE] [--json]

FILE is DocRED-style JSON (`.json`, `.json.gz`, `file.json[a:b]` for a slice) or an EoG file
(CDR/GDA). Without --rel2id the relations are those of the file itself; with it, a relation the
map lacks is an error naming the document. Bad input: exit status 1 and one line naming the file,
document and field. No tokenizer is needed.
"""

if __name__ == "__main__":
    from docre.cli.check_data import run

    run()
