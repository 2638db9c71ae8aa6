"""Fetch a dataset from its upstream location, verified, or say where to get it.

    python scripts/download_data.py NAME [--dest data/]       NAME: redocred, docred, docgnre, dwie, cdr, gda

Every file is downloaded into `DEST/NAME/FILE.part` (resumed there after an interruption, with an
HTTP range request), checked against its recorded sha256 or git blob id, and only then renamed to
its final name; a file already in place is verified and kept. Re-DocRED, DocRED and DWIE come
from git repositories at pinned commits. Datasets without a verifiable copy (DocGNRE: a zip
without a published checksum) or whose licence forbids redistribution (CDR and GDA: the EoG
preprocessing's NaCTeM non-commercial no-redistribution licence) are not downloaded: the command
says where to get them and verifies the copies you place in `DEST/NAME/` where a hash is known. The
sources are described in docs/data.md; each URL's pinned commit and hash is recorded next to it in
docre/cli/download_data.py.
"""

if __name__ == "__main__":
    from docre.cli.download_data import run

    run()
