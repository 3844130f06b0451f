"""Data between jobs, on the client's side: uploads of local files, references to jobs' outputs,
and downloads, all over the controller's DataService, so they work as well from another machine.

    raw = jobnest.upload("data/raw.csv")            # sent when a job that reads it is submitted
    reduced = client.submit(["reduce", "{inputs.raw}", "{output}"], inputs={"raw": raw})
    fit = client.submit(["fit", "{inputs.data}"], inputs={"data": reduced.output})
    fit.result()                                     # the JSON in result.json of fit's output
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import Conflict, InvalidSpec
from .v1 import jobnest_pb2 as pb

if TYPE_CHECKING:
    from ._client import Job

CHUNK = 1 << 20


class Upload:
    """A local file or folder to send as a job's input; sent (once per content) at submit."""

    def __init__(self, path: str | os.PathLike[str], digest: str = "") -> None:
        self.path = Path(path)
        self.digest = digest  # of its manifest, once sent

    def __repr__(self) -> str:
        return f"<Upload {self.path}{' ' + self.digest[:12] if self.digest else ''}>"


def upload(path: str | os.PathLike[str]) -> Upload:
    """`path` as a job's input: `inputs={"raw": jobnest.upload("raw.csv")}`."""
    return Upload(path)


class Output:
    """A job's output: an input for other jobs (`inputs={"x": job.output}`), or files to fetch."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def __repr__(self) -> str:
        return f"<Output of job {self.job.uuid[:8]}>"

    @property
    def digest(self) -> str:
        """The digest of the output's manifest; "" until the job has succeeded."""
        return self.job.info.output

    @property
    def path(self) -> str:
        """Where the run writes its output, on the controller's machine."""
        return self.job.info.output_dir

    def download(self, dest: str | os.PathLike[str]) -> Path:
        """Fetch the output's files into `dest`, once the job has succeeded."""
        digest = self.job.wait().info.output
        if not digest:
            raise Conflict(f"job {self.job.uuid} ended {self.job.info.state}: it has no output", field="job")
        return self.job.client.download(digest, dest)


def walk(root: Path) -> list[pb.ManifestEntry]:
    """The manifest entries of a file or a folder, with each file's sha256."""
    if not root.exists():
        raise InvalidSpec(f"{str(root)!r} does not exist", field="upload")
    paths = [(root.name, root.resolve())] if not root.is_dir() else [  # a link given: what it names
        (p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if not p.is_dir() or p.is_symlink()]
    entries = []
    for rel, path in paths:
        if path.is_symlink():
            entries.append(pb.ManifestEntry(path=rel, link=os.readlink(path)))
        elif path.is_file():
            entries.append(pb.ManifestEntry(path=rel, digest=file_sha256(path), size=path.stat().st_size,
                                            executable=os.access(path, os.X_OK)))
        else:
            raise InvalidSpec(f"{str(path)!r} is not a file, a folder or a link", field="upload")
    return entries


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


SKIP = {"__pycache__", ".git", ".venv", "node_modules", ".pytest_cache"}  # never part of a program
IGNORE_FILE = ".jobnestignore"


def program_archive(folder: Path, into: BinaryIO) -> None:
    """Write a gzipped tar of a program's folder into `into`: the same bytes for the same files,
    so an unchanged program keeps its signature. Caches, version control and what the folder's
    `.jobnestignore` names are left out."""
    ignored = _ignore_rule(folder)
    with gzip.GzipFile(fileobj=into, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for top, dirs, files in os.walk(folder):
            base = Path(top).relative_to(folder)
            dirs[:] = sorted(d for d in dirs if d not in SKIP and not ignored((base / d).as_posix(), True))
            kept = [base / f for f in files if not ignored((base / f).as_posix(), False)]
            for rel in sorted([*(base / d for d in dirs), *kept]):
                path = folder / rel
                info = tar.gettarinfo(str(path), arcname=rel.as_posix())
                if info is None or not (info.isfile() or info.isdir() or info.issym()):
                    continue  # a socket or a pipe: nothing a program reads as a file
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)


def _ignore_rule(folder: Path) -> Callable[[str, bool], bool]:
    """Whether a path of `folder` is left out, by the patterns of its `.jobnestignore` (one per
    line, as in .gitignore: `*.fq` anywhere, `/NOTES.txt` or `data/*.csv` from the folder,
    `results/` only folders; `#` starts a comment; `!` is not supported)."""
    try:
        lines = (folder / IGNORE_FILE).read_text().splitlines()
    except FileNotFoundError:
        return lambda rel, is_dir: False
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]

    def ignored(rel: str, is_dir: bool) -> bool:
        for pattern in patterns:
            if pattern.endswith("/") and not is_dir:
                continue
            pattern = pattern.rstrip("/")
            if "/" in pattern:
                if fnmatch.fnmatchcase(rel, pattern.lstrip("/")):
                    return True
            elif fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern):
                return True
        return False
    return ignored


def chunks(path: Path, entry: pb.ManifestEntry) -> Iterator[pb.BlobChunk]:
    """A file as upload chunks: the first names its digest and size."""
    with open(path, "rb") as f:
        data = f.read(CHUNK)
        yield pb.BlobChunk(digest=entry.digest, size=entry.size, data=data)
        while data := f.read(CHUNK):
            yield pb.BlobChunk(data=data)


def lay_out(manifest: pb.Manifest, dest: Path, read: Any) -> Path:
    """Write a manifest's files under `dest`, each blob's bytes from `read(digest)` (an iterator
    of chunks) and checked against its digest; returns the folder, or for a one-file upload the file."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in manifest.entries:
        if entry.path.startswith("/") or ".." in entry.path.split("/"):
            raise InvalidSpec(f"{entry.path!r} is not a path inside the data", field="entries")
        path = dest / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry.link:
            path.unlink(missing_ok=True)
            path.symlink_to(entry.link)
            continue
        hasher = hashlib.sha256()
        with open(path, "wb") as f:
            for data in read(entry.digest):
                hasher.update(data)
                f.write(data)
        if hasher.hexdigest() != entry.digest:
            raise Conflict(f"{entry.path}: the bytes received have sha256 {hasher.hexdigest()}, not {entry.digest}",
                           field="entries")
        if entry.executable:
            path.chmod(0o755)
    return dest / manifest.file if manifest.file else dest
