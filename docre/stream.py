"""Prediction over a corpus: streamed chunk by chunk, resumable after any interruption, sharded over
the processes of `torchrun`.

The input is read, prepared, predicted and written `chunk` documents at a time, so memory does not
grow with the corpus (JSON lines; a JSON list is parsed whole first, as it must be). Process `rank`
of `world` takes chunks rank, rank + world, ... and writes one record per document of them (a JSON
line) to its shard `OUT.shard-<rank>-of-<world>`; after every chunk the shard is flushed and synced
and then its progress file `<shard>.progress.json` records how far the input and the shard are
done (with a hash of the input read so far). An interrupted run — Ctrl-C, SIGTERM, a kill, a crash —
run again with the same command truncates the shard to the last recorded chunk and goes on from
there. When every shard is complete, rank 0 merges them chunk by chunk in input order into OUT
(`finish` writes the output format) and removes them, so the output is the same whatever the number
of processes and interruptions. A finished OUT is not redone unless `overwrite`.

Lines that are not valid documents stop the run with one line naming the file and the line; with
`skip_bad` they are written to `OUT.rejects.jsonl` ({"line", "error"}) instead and counted.
"""

import contextlib
import gzip
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

from docre.errors import DocreError
from docre.utils import atomic_write_json, logger, plural


class Interrupted(DocreError):
    """Ctrl-C after some chunks were kept: the CLI's one line says how to go on; exit status 130
    (128 + SIGINT), as for any Ctrl-C."""

    exit_status = 130


@dataclass
class Progress:
    """A shard's state on disk, rewritten atomically after every chunk."""

    settings: dict  # what must not change between an interrupted run and its continuation
    chunks_done: int = 0  # chunks of the whole input this process has passed (its own and the others')
    bytes_done: int = 0  # input bytes read when the last chunk was done
    input_sha256: str = ""  # of those bytes
    shard_bytes: int = 0  # bytes of the shard file that belong to finished chunks
    rejects_bytes: int = 0
    records: list[int] = field(default_factory=list)  # records written per chunk of this process, in order
    rejects: list[int] = field(default_factory=list)  # rejected lines per chunk of this process, in order
    documents: int = 0
    rejected: int = 0
    finished: bool = False


def open_text(path: Path):
    """The file's (uncompressed) bytes as a binary handle: gunzipped when it is gzip, by magic number
    as the readers tell (docre.data.docred.read_bytes), not by name."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")  # the caller's `with` closes it


def input_lines(path: Path, start: int = 0) -> Iterator[tuple[int, bytes, int]]:
    """(line number, line, input bytes read after it) of a JSON-lines file (gzip by magic number),
    from byte `start` (a line boundary) of the uncompressed text."""
    try:
        with open_text(path) as handle:
            number, offset = 0, 0
            if start:
                number = _skip(handle, start)
                offset = start
            for line in handle:
                number += 1
                offset += len(line)
                yield number, line, offset
    except (OSError, EOFError) as error:
        raise DocreError(f"{path}: cannot read ({error})") from None


def _skip(handle, count: int) -> int:
    """Read `count` bytes (whole lines) from `handle`; return how many lines they held."""
    lines, left = 0, count
    while left > 0:
        line = handle.readline()
        if not line:
            break
        lines, left = lines + 1, left - len(line)
    return lines


def prefix_digest(path: Path, count: int):
    """sha256 (a hashlib object, to be continued) of the first `count` bytes of the file's
    (uncompressed) text."""
    digest, left = hashlib.sha256(), count
    try:
        with open_text(path) as handle:
            while left > 0:
                block = handle.read(min(left, 1 << 20))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
    except (OSError, EOFError) as error:  # a gzip cut inside the part already done
        raise DocreError(f"{path}: cannot read ({error})") from None
    return digest


def count_lines(path: Path) -> int:
    return sum(1 for _ in input_lines(path))


def parse_line(path: Path, number: int, line: bytes, prepare: Callable[[list], list]) -> dict | None:
    """The document of one JSON line (None for a blank line), validated and prepared by `prepare`
    (`predict.prepare_documents` with the input format and file name).

    Raises:
        DocreError: "FILE: line N ('title'): what is wrong".
    """
    if not line.strip():
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DocreError(f"{path}: line {number}: not UTF-8 text (byte {error.start})") from None
    try:
        doc = json.loads(text)
    except ValueError as error:
        raise DocreError(f"{path}: line {number}: invalid JSON ({error})") from None
    if isinstance(doc, dict) and "text" in doc and "title" not in doc and "sents" not in doc:
        # untitled raw text (plain text for the entity finder, most often): titled by its place in the file, as a
        # JSON list's documents are, so that titles stay unique in a chunk, which keys its rows by title
        doc = {**doc, "title": f"document {number - 1}"}
    try:
        return prepare([doc])[0]
    except DocreError as error:  # "FILE: document 0 ('title'): ..." -> "FILE: line N ('title'): ..."
        where = re.sub(r"^document \d+", "", str(error).removeprefix(f"{path}: "))
        raise DocreError(f"{path}: line {number}{where if where.startswith((' (', ':')) else ': ' + where}") from None


def shard_path(output: Path, rank: int, world: int) -> Path:
    return output.with_name(f"{output.name}.shard-{rank}-of-{world}")


def load_progress(shard: Path, settings: dict, path: Path):
    """(the shard's recorded progress, or a fresh one; the input digest so far). Refuses a
    continuation whose settings or input prefix differ from the interrupted run's."""
    file = progress_path(shard)
    if not file.is_file():
        return Progress(settings), hashlib.sha256()
    try:
        progress = Progress(**json.loads(file.read_text(encoding="utf-8")))
    except (ValueError, TypeError):
        raise DocreError(f"{file}: unreadable progress file; delete it and {shard} to start again") from None
    if progress.settings != settings:
        model = differences(progress.settings.get("model_files") or {}, settings.get("model_files") or {})
        if model:  # never continue one model's output with another's predictions
            raise DocreError(f"{file}: an interrupted run of another model (changed since: {', '.join(model)}); "
                             "pass --overwrite to start again with this one")
        changed = differences(progress.settings, settings)
        raise DocreError(f"{file}: an interrupted run with other settings ({', '.join(changed)}); rerun it with the "
                         "same command, or pass --overwrite to start again")
    digest = prefix_digest(path, progress.bytes_done)
    if digest.hexdigest() != progress.input_sha256:
        raise DocreError(f"{path}: changed in its first {progress.bytes_done} bytes since the interrupted run "
                         f"({file}); pass --overwrite to start again")
    return progress, digest


def differences(before: dict, now: dict) -> list[str]:
    """The keys whose values differ between two dicts (a key missing from one counts)."""
    return sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))


def progress_path(shard: Path) -> Path:
    return Path(f"{shard}.progress.json")


def save_progress(shard: Path, progress: Progress) -> None:
    atomic_write_json(progress_path(shard), asdict(progress))


def remove_state(output: Path, world: int) -> None:
    for rank in range(world):
        shard = shard_path(output, rank, world)
        for file in (shard, progress_path(shard), Path(f"{shard}.rejects")):
            file.unlink(missing_ok=True)


def _open_appending(path: Path, size: int):
    """The file opened for appending after its first `size` bytes (the rest, a chunk cut short, dropped)."""
    handle = open(path, "ab")  # noqa: SIM115 (the caller's `with` closes it)
    handle.truncate(size)
    handle.seek(size)
    return handle


def _sync(handle) -> int:
    handle.flush()
    os.fsync(handle.fileno())
    return handle.tell()


def run_shard(path: Path, output: Path, rank: int, world: int, settings: dict, chunk: int,
              prepare: Callable[[list], list], records: Callable[[list[dict]], list[bytes]], skip_bad: bool,
              bar=None) -> tuple[Progress, int]:
    """Predict this process's chunks of the JSON-lines file `path` into its shard (continuing an
    interrupted run); returns its progress and the documents it predicted in this call. `records`
    turns a chunk's documents into one output record (bytes ending in a newline) each. `bar` (tqdm
    or None) advances by input lines."""
    shard = shard_path(output, rank, world)
    progress, digest = load_progress(shard, settings, path)
    before = progress.documents
    if progress.finished:
        return progress, 0
    if progress.chunks_done:
        logger.info("%s: continuing an interrupted run at line %d of %s (%s predicted before)", shard,
                    progress.chunks_done * chunk + 1, path, plural(progress.documents, "document"))
    if bar is not None:
        bar.update(progress.chunks_done * chunk)  # the lines of the chunks done before an interruption
    try:
        _predict_chunks(path, shard, rank, world, chunk, prepare, records, skip_bad, bar, progress, digest)
    except BaseException as error:
        if not progress.records:  # nothing of this process's finished: leave no files behind
            for file in (shard, progress_path(shard), Path(f"{shard}.rejects")):
                file.unlink(missing_ok=True)
        elif isinstance(error, DocreError):  # bad input after finished chunks: those are kept for a rerun
            done = plural(progress.documents, "document")
            raise DocreError(f"{error} (the {done} predicted before it are kept: "
                             "run the same command again to go on from there)") from None
        elif isinstance(error, KeyboardInterrupt):  # so the user knows the kept shard is not debris
            raise Interrupted(f"interrupted after {plural(progress.documents, 'document')}, kept in {shard}: "
                              "run the same command again to go on from there") from None
        raise
    progress.finished = True
    save_progress(shard, progress)
    return progress, progress.documents - before


def _predict_chunks(path: Path, shard: Path, rank: int, world: int, chunk: int, prepare, records, skip_bad: bool,
                    bar, progress: Progress, digest) -> None:
    """run_shard's loop: this process's chunks from where `progress` stands, each synced and recorded."""
    with _open_appending(shard, progress.shard_bytes) as out, \
            _open_appending(Path(f"{shard}.rejects"), progress.rejects_bytes) as rejects:
        lines, index = input_lines(path, progress.bytes_done), progress.chunks_done
        while block := list(islice(lines, chunk)):
            for _, line, _ in block:
                digest.update(line)
            if index % world == rank:
                docs, bad = _parse_block(path, block, prepare, skip_bad)
                out.write(b"".join(records(docs)) if docs else b"")
                rejects.write(b"".join(json.dumps({"line": n, "error": e}).encode() + b"\n" for n, e in bad))
                progress.records.append(len(docs))
                progress.rejects.append(len(bad))
                progress.documents, progress.rejected = progress.documents + len(docs), progress.rejected + len(bad)
                progress.shard_bytes, progress.rejects_bytes = _sync(out), _sync(rejects)
            progress.chunks_done, progress.bytes_done, progress.input_sha256 = index + 1, block[-1][2], digest.hexdigest()
            save_progress(shard, progress)
            if bar is not None:
                bar.update(len(block))
            index += 1


def _parse_block(path: Path, block: list, prepare, skip_bad: bool) -> tuple[list[dict], list[tuple[int, str]]]:
    """A chunk's documents and, with `skip_bad`, its bad lines as (line number, error)."""
    docs, bad, seen = [], [], {}
    for number, line, _ in block:
        try:
            doc = parse_line(path, number, line, prepare)
            if doc is not None and doc["title"] in seen:  # the predictor keys a chunk's rows by title
                raise DocreError(f"{path}: line {number}: title {doc['title']!r} repeats line {seen[doc['title']]} "
                                 "(titles identify documents)")
        except DocreError as error:
            if not skip_bad:
                raise
            bad.append((number, str(error)))
            continue
        if doc is not None:
            seen[doc["title"]] = number
            docs.append(doc)
    return docs, bad


def merged_records(output: Path, world: int, kind: str = "records") -> Iterator[bytes]:
    """Every finished shard's records (or rejects), chunk by chunk in input order."""
    shards = [shard_path(output, rank, world) for rank in range(world)]
    progress = [Progress(**json.loads(progress_path(s).read_text(encoding="utf-8"))) for s in shards]
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(s if kind == "records" else Path(f"{s}.rejects"), "rb")) for s in shards]
        for index in range(progress[0].chunks_done):
            rank, own = index % world, index // world
            counts = progress[rank].records if kind == "records" else progress[rank].rejects
            for _ in range(counts[own]):
                yield handles[rank].readline()


def write_lines(output: Path, lines: Iterable[bytes]) -> int:
    """Write `lines` to `output` atomically; returns how many."""
    from docre.utils import atomic_open

    count = 0
    with atomic_open(output, "wb") as handle:
        for line in lines:
            handle.write(line)
            count += 1
    return count


def write_joined_lists(output: Path, lists: Iterable[bytes], member: str | None = None) -> None:
    """Write `output` atomically: one JSON list of the elements of `lists` (each the JSON text of a list),
    streamed; with `member`, as that file inside a zip archive (a CodaLab result.zip)."""
    import zipfile

    from docre.utils import atomic_open

    with atomic_open(output, "wb") as handle, contextlib.ExitStack() as stack:
        target = handle
        if member is not None:
            archive = stack.enter_context(zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED))
            target = stack.enter_context(archive.open(member, "w"))
        target.write(b"[")
        first = True
        for text in lists:
            inner = text.strip()[1:-1]  # the elements without their brackets
            if inner:
                target.write(inner if first else b", " + inner)
                first = False
        target.write(b"]")
