"""Convert annotated text (JSON lines: text, entity mention spans, relations) into a DocRED-format file.

Usage: python scripts/convert.py --help. The command lives in docre/cli/convert.py; after the set-up it
is also the console command `docre-convert`.
"""

if __name__ == "__main__":
    from docre.cli.convert import run

    run()
