"""scripts/download_data.py without a network: verification, atomic rename, resume, refusals."""

import gzip
import hashlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import docre.cli.download_data as dd
from docre.errors import DocreError

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"  # the shared data folder beside the repository (CDR/GDA files)

CONTENT = b"hello\n"
HELLO_BLOB = "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object` of "hello\n"


def test_digests_sha256_and_git_blob(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(CONTENT)
    assert dd.digest_matches(path, dd.Source("f", sha256=hashlib.sha256(CONTENT).hexdigest()))
    assert dd.digest_matches(path, dd.Source("f", git_blob=HELLO_BLOB))
    assert not dd.digest_matches(path, dd.Source("f", git_blob="0" * 40))
    assert not dd.digest_matches(path, dd.Source("f", sha256="0" * 64))


def test_download_verifies_then_renames(tmp_path):
    upstream = tmp_path / "upstream.json"
    upstream.write_bytes(CONTENT)
    dest = tmp_path / "dest"
    dest.mkdir()
    good = dd.Source("x.json", upstream.as_uri(), git_blob=HELLO_BLOB)
    assert dd.download(good, dest, progress=False).read_bytes() == CONTENT
    assert sorted(p.name for p in dest.iterdir()) == ["x.json"]  # no .part left

    bad = dd.Source("y.json", upstream.as_uri(), sha256="0" * 64)
    with pytest.raises(DocreError, match="does not match its recorded sha256"):
        dd.download(bad, dest, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["x.json"]  # nothing half-written under either name


class Partial(io.BytesIO):
    """A 206 response carrying the rest of the file."""
    status = 206

    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_an_interrupted_download_resumes_from_its_part_file(tmp_path, monkeypatch):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x.json.part").write_bytes(CONTENT[:3])
    asked = []

    def urlopen(request, timeout):
        asked.append(request.headers.get("Range"))
        return Partial(CONTENT[3:])

    monkeypatch.setattr(dd.urllib.request, "urlopen", urlopen)
    path = dd.download(dd.Source("x.json", "https://example.org/x.json", git_blob=HELLO_BLOB), dest, progress=False)
    assert asked == ["bytes=3-"] and path.read_bytes() == CONTENT


def test_a_server_without_ranges_restarts_the_file(tmp_path):
    upstream = tmp_path / "upstream.json"
    upstream.write_bytes(CONTENT)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x.json.part").write_bytes(b"garbage")  # file:// ignores the range: the whole file comes again
    assert dd.download(dd.Source("x.json", upstream.as_uri(), git_blob=HELLO_BLOB), dest, progress=False).read_bytes() == CONTENT


def test_offline_is_a_clear_error(tmp_path):
    with pytest.raises(DocreError, match=r"cannot download .*are you offline"):
        dd.download(dd.Source("x.json", "http://127.0.0.1:9/x.json"), tmp_path, progress=False)


def test_an_http_error_names_the_url_and_status(tmp_path, monkeypatch):
    def urlopen(request, timeout):
        raise dd.urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)

    monkeypatch.setattr(dd.urllib.request, "urlopen", urlopen)
    with pytest.raises(DocreError, match=r"^https://example\.org/x\.json: HTTP 404 Not Found$"):
        dd.download(dd.Source("x.json", "https://example.org/x.json"), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/download_data.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_cdr_is_never_downloaded_but_placed_copies_are_verified(tmp_path):
    result = run("cdr", "--dest", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot download" in result.stderr and "edge-oriented-graph" in result.stderr and len(result.stderr.splitlines()) == 1
    if not (SHARED / "cdr").exists():
        pytest.skip("the CDR files are not in the shared data folder beside the repository")
    assert not (tmp_path / "cdr").exists()  # a failed run leaves no empty folder; the user makes it
    (tmp_path / "cdr").mkdir()
    for name in ("train_filter.data", "dev_filter.data", "test_filter.data"):
        (tmp_path / "cdr" / name).write_bytes(gzip.decompress((SHARED / "cdr" / f"{name}.gz").read_bytes()))
    result = run("cdr", "--dest", str(tmp_path))
    assert result.returncode == 0 and result.stdout.count("verified") == 3
    (tmp_path / "cdr" / "dev_filter.data").write_bytes(b"changed")
    result = run("cdr", "--dest", str(tmp_path))
    assert result.returncode == 1 and "dev_filter.data: does not match the recorded sha256" in result.stderr


def test_every_downloaded_file_is_pinned_and_has_a_digest():
    downloadable = [(name, s) for name, (sources, _) in dd.DATASETS.items() for s in sources if s.url]
    assert {name for name, _ in downloadable} == {"redocred", "docred", "dwie"}
    for name, source in downloadable:
        # a commit in the address: the bytes cannot change under the recorded digest
        assert re.search(r"/[0-9a-f]{40}/", source.url), (name, source.url)
        assert re.fullmatch(r"[0-9a-f]{64}", source.sha256) or re.fullmatch(r"[0-9a-f]{40}", source.git_blob), (name, source)
    # CDR and GDA (no redistribution) and DocGNRE (no checksum published) are never fetched
    assert all(not s.url for name in ("cdr", "gda", "docgnre") for s in dd.DATASETS[name][0])


def test_shipped_redocred_files_match_the_downloaders_digests(tmp_path):
    """The recorded digests are those of the real files (the two shipped with docre)."""
    sources = {s.name: s for s in dd.DATASETS["redocred"][0]}
    for name in ("dev_revised.json", "test_revised.json"):
        path = tmp_path / name
        path.write_bytes(gzip.decompress((ROOT / "data" / "redocred" / f"{name}.gz").read_bytes()))
        assert dd.digest_matches(path, sources[name])


def test_docgnre_says_where_to_get_it(tmp_path):
    result = run("docgnre", "--dest", str(tmp_path))
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert "enhancement_data.zip" in result.stderr and "no checksum" in result.stderr


class Broken(Partial):
    """A 200 response whose connection drops after `keep` bytes."""
    status = 200

    def __init__(self, data: bytes, keep: int):
        super().__init__(data)
        self.keep = keep

    def read(self, size=-1):
        if self.tell() >= self.keep:
            raise ConnectionResetError(104, "Connection reset by peer")
        return super().read(min(size, self.keep - self.tell()))


def test_a_failed_download_leaves_nothing_it_created(tmp_path, monkeypatch):
    from tests.cli import run_main

    def offline(request, timeout):
        raise dd.urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(dd.urllib.request, "urlopen", offline)
    dest = tmp_path / "new" / "deeper"
    with pytest.raises(DocreError, match="are you offline"):
        run_main("download_data", ["redocred", "--dest", str(dest)])
    assert list(tmp_path.iterdir()) == []  # neither DEST nor DEST/redocred, nor new/
    with pytest.raises(DocreError, match="docre cannot download"):  # the same for a dataset placed by hand
        run_main("download_data", ["cdr", "--dest", str(dest)])
    assert list(tmp_path.iterdir()) == []

    # what existed before stays, even empty
    (dest / "redocred").mkdir(parents=True)
    with pytest.raises(DocreError, match="are you offline"):
        run_main("download_data", ["redocred", "--dest", str(dest)])
    assert list((dest / "redocred").iterdir()) == []

    # the connection drops: before the first byte nothing is left; after it, the part file (resumed
    # on the next run, as the message says) and the folders holding it
    shutil.rmtree(tmp_path / "new")
    for keep in (0, 3):
        monkeypatch.setattr(dd.urllib.request, "urlopen", lambda request, timeout, keep=keep: Broken(CONTENT, keep))
        with pytest.raises(DocreError) as error:
            run_main("download_data", ["redocred", "--dest", str(dest)])
        message = str(error.value)
        assert "\n" not in message and "the transfer stopped (Connection reset by peer)" in message, message
        if keep:
            assert (dest / "redocred" / "train_revised.json.part").read_bytes() == CONTENT[:3]
            assert "run this command again to resume it" in message
        else:
            assert list(tmp_path.iterdir()) == []
