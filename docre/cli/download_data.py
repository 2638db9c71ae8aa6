"""Fetch a dataset from its upstream location, verified, or say where to get it.

Every file is downloaded into `DEST/NAME/FILE.part` (resumed there after an interruption, with an
HTTP range request), checked against its recorded sha256 or git blob id, and only then renamed to
its final name; a file already in place is verified and kept. Re-DocRED, DocRED and DWIE come
from git repositories at pinned commits. Datasets without a verifiable copy (DocGNRE: a zip
without a published checksum) or whose licence forbids redistribution (CDR and GDA: the EoG
preprocessing's NaCTeM non-commercial no-redistribution licence) are not downloaded: the command
says where to get them and verifies the copies you place in `DEST/NAME/` where a hash is known. Sources:
../shared/data/SOURCES.md.

Examples:
  docre-download-data redocred
  docre-download-data dwie --dest /data/docre
"""

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from docre.cli import command_parser
from docre.errors import DocreError, run_cli


@dataclass(frozen=True)
class Source:
    name: str  # file name in DEST/<dataset>/
    url: str = ""  # "" = not downloadable: placed by the user
    sha256: str = ""  # of the file's bytes; or
    git_blob: str = ""  # its git object id in the upstream repository


REDOCRED = "https://raw.githubusercontent.com/tonytan48/Re-DocRED/ccfb54f5ddf5836027c87badda10f6dfc56efaac/data/"
# Copies in plain git at pinned commits, identified by the blob ids recorded in ../shared/data/SOURCES.md
# (the same blobs are in guojiapub/PEMSCL and tri154/DocReDataParse; DWIE also in XingYing-stack/MILR).
DOCRED = "https://raw.githubusercontent.com/xiaoyuxin1002/SAIS/2b5e52be875cbc62241e681059ff19be498b8214/Data/DocRED/Original/"
DWIE = "https://raw.githubusercontent.com/RidongHan/DocRE-Co-Occur/15b3280fdad49922ab1edf921c6c0d75caeb8aac/dataset/dwie/"
DATASETS: dict[str, tuple[list[Source], str]] = {
    "redocred": ([
        Source("train_revised.json", REDOCRED + "train_revised.json", git_blob="1ba485adf8e4cb789c441de2f6fe41de95690caa"),
        Source("dev_revised.json", REDOCRED + "dev_revised.json",
               sha256="051ee1d057204a5d08ef5502beacdadf191245b5eaf0e29ec2c607cf002c016f"),
        Source("test_revised.json", REDOCRED + "test_revised.json",
               sha256="ea673b7ef91e16510d7eb88863d3903e47318dc5653ef361266f27ae3b84723c"),
    ], "Re-DocRED (Tan et al. 2022), MIT licence, github.com/tonytan48/Re-DocRED"),
    "docred": ([
        Source("train_annotated.json", DOCRED + "train_annotated.json", git_blob="7917c6888ccb22d684265503337717f4ca5fb2a7"),
        Source("dev.json", DOCRED + "dev.json", git_blob="40da9836a911cae97cec74223a03e1b0ad770e7a"),
        Source("test.json", DOCRED + "test.json", git_blob="be709b16335335de621c0437c2f16f1ae80d92cb"),  # unlabelled
    ], "DocRED (Yao et al. 2019), MIT licence: github.com/thunlp/DocRED links the files (Google Drive) and the "
       "Hugging Face dataset thunlp/docred mirrors them; rel2id.json and rel_info.json ship in data/docred/"),
    "docgnre": ([Source("re_docred_test_data_enhancement.json")],
                "DocGNRE (Li et al. 2023, MIT): its files ship only inside "
                "https://bigai-nlco.s3.ap-southeast-1.amazonaws.com/DocGNRE/enhancement_data.zip (linked from "
                "github.com/bigai-nlco/DocGNRE), for which no checksum is published, so docre does not fetch it "
                "unverified; training uses Re-DocRED (python scripts/download_data.py redocred)"),
    "dwie": ([
        Source("train_annotated.json", DWIE + "train_annotated.json", git_blob="d1695b97727f97e896ca86e2090a8612b7e2eeb2"),
        Source("dev.json", DWIE + "dev.json", git_blob="14c5c2c2fd12e870f24214ffbd1ac013a680c383"),
        Source("test.json", DWIE + "test.json", git_blob="65b494fe6d5aa6246804ac5a71f1aabadd6508bd"),
    ], "DWIE (Zaporojets et al. 2021) in DocRED form (LogiRE's preprocessing, as the ATGL code reads it); the "
       "original data and its terms: github.com/klimzaporojets/DWIE"),
    "cdr": ([
        Source("train_filter.data", sha256="d12936a70c4e96fa9081b36ae342dadc32aae953c6505bd411a84ebce0672329"),
        Source("dev_filter.data", sha256="f2390876853ea8e2f64ebf3eb7d278d384f82f656aa8fffbda2023e9c93ebe7e"),
        Source("test_filter.data", sha256="0cfb22d9c25a4346ecdd762865bfc725aadcffba31a81d69768f174bae3cae3b"),
    ], "BC5CDR in the EoG format: build it with github.com/fenchri/edge-oriented-graph (its licence forbids "
       "redistribution, so docre cannot fetch it)"),
    "gda": ([
        Source("train.data", git_blob="efdce7675a05e9978e9f0a26d1d7a643602cf7a3"),
        Source("dev.data", git_blob="0fc1f949aa34b8bc73f93cc91415d7541baec9fc"),
        Source("test.data", sha256="0cd71408e30e39d1a0cfd10e9be5f290eab0913dadbc219b6b17850e8b8dd50c"),
    ], "GDA (Wu et al. 2019) in the EoG format with ATLOP's train/dev split: build it with "
       "github.com/fenchri/edge-oriented-graph (its licence forbids redistribution, so docre cannot fetch it)"),
}
CHUNK = 1 << 20


def digest_matches(path: Path, source: Source) -> bool:
    """The file's sha256 or git blob id equals the recorded one (True when none is recorded)."""
    if not (source.sha256 or source.git_blob):
        return True
    sha = hashlib.sha256()
    blob = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # git's object id: header + content
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
            blob.update(chunk)
    return sha.hexdigest() == source.sha256 if source.sha256 else blob.hexdigest() == source.git_blob


def download(source: Source, folder: Path, progress: bool = True) -> Path:
    """Fetch `source` into folder/name: resumed from name.part, verified, then renamed."""
    from tqdm.auto import tqdm

    target, part = folder / source.name, folder / (source.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(source.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # the partial file is already complete
            response = None
        else:
            raise DocreError(f"{source.url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise DocreError(f"{source.url}: cannot download ({getattr(error, 'reason', error)}); are you offline? "
                         f"Place the file at {target} yourself and run this command again to verify it") from None
    if response is not None:
        try:
            with response:
                resumed = have and getattr(response, "status", 200) == 206  # a server without ranges sends it all
                total = int(response.headers.get("Content-Length") or 0) + (have if resumed else 0)
                with open(part, "ab" if resumed else "wb") as handle, \
                        tqdm(total=total or None, initial=have if resumed else 0, unit="B", unit_scale=True,
                             desc=source.name, disable=not progress) as bar:
                    while chunk := response.read(CHUNK):
                        handle.write(chunk)
                        bar.update(len(chunk))
                    handle.flush()
                    os.fsync(handle.fileno())
        except (OSError, http.client.HTTPException) as error:  # the connection dropped, a timeout, a full disk
            why = getattr(error, "strerror", None) or error
            resume = f"; what arrived is kept in {part}: run this command again to resume it"
            raise DocreError(f"{source.url}: the transfer stopped ({why})"
                             + (resume if part.exists() and part.stat().st_size else "")) from None
        finally:  # a part file without a byte resumes nothing: no reason to leave it
            if part.exists() and part.stat().st_size == 0:
                part.unlink()
    if not digest_matches(part, source):
        part.unlink()
        raise DocreError(f"{source.url}: the downloaded file does not match its recorded "
                         f"{'sha256' if source.sha256 else 'git blob id'}; it was deleted (run again to retry)")
    os.replace(part, target)
    return target


def main() -> int:
    parser = command_parser("docre-download-data", __doc__)
    parser.add_argument("name", choices=sorted(DATASETS), metavar="NAME", help="the dataset: " + ", ".join(sorted(DATASETS)))
    parser.add_argument("--dest", default="data", metavar="DEST", help="folder for the dataset's folder NAME/ (default: data)")
    args = parser.parse_args()

    sources, about = DATASETS[args.name]
    folder = Path(args.dest) / args.name
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        missing = []
        for source in sources:
            target = folder / source.name
            if target.exists():
                if not digest_matches(target, source):
                    raise DocreError(f"{target}: does not match the recorded {'sha256' if source.sha256 else 'git blob id'} "
                                     "of the upstream file (another version, or damaged); move it away and run again")
                print(f"{target}: present" + (", verified" if source.sha256 or source.git_blob else " (no recorded hash)"))
            elif source.url:
                print(f"{download(source, folder)}: downloaded, verified")
            else:
                missing.append(source.name)
        if missing:
            raise DocreError(f"{args.name}: docre cannot download {', '.join(missing)}. {about}. Put the files in {folder}/ "
                             "and run this command again to verify them")
    except BaseException:  # also Ctrl-C: a failed run leaves none of the folders it made, only files worth keeping
        for path in created:
            try:
                path.rmdir()  # only when empty: a part file kept for resuming keeps its folders
            except OSError:
                break
        raise
    return 0


def run() -> None:
    """The `docre-download-data` console command (and `python scripts/download_data.py`)."""
    run_cli(main)
