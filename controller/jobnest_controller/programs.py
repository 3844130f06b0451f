"""Program folders of runner jobs (`jobnest submit program.py`), stored by content.

A folder arrives as a gzipped tar, streamed as a blob of the data (or, small, within a submit);
the first submit that names it checks it and keeps it here under its sha256. The reconciler
unpacks it into a run's work dir, the run's own copy, where the executor makes it the job's
working directory.
"""

import hashlib
import io
import secrets
import shutil
import tarfile
from pathlib import Path
from typing import BinaryIO

from jobnest.errors import InvalidSpec, NotFound

from .data import Data, Recent, is_digest

MAX_ARCHIVE = 64 * 2**20  # sent within a submit; streamed as data, the data's upload limit holds
MAX_UNPACKED, MAX_MEMBERS = 512 * 2**20, 100_000  # what an archive may unpack to, in bytes and files


class Programs:
    def __init__(self, root: str, data: Data | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = data  # where a streamed program arrives, as a blob
        self.recent = data.recent if data else Recent()  # naming a program keeps it from `collect` too

    def _path(self, digest: str) -> Path:
        if not is_digest(digest):  # never a path out of the store
            raise InvalidSpec(f"{digest[:80]!r} is not a program's digest (64 hex digits)", field="program")
        return self.root / f"{digest}.tar.gz"

    def store(self, archive: bytes) -> str:
        """Keep an archive sent in a submit; returns its digest."""
        if len(archive) > MAX_ARCHIVE:
            raise InvalidSpec(f"{len(archive)} bytes is over the limit of {MAX_ARCHIVE}: send it as data "
                              "(as the SDK does)", field="program_archive")
        _check(io.BytesIO(archive), "program_archive")
        digest = hashlib.sha256(archive).hexdigest()
        self.recent.name([digest])
        path = self._path(digest)
        if not path.exists():
            tmp = path.with_suffix(f".{secrets.token_hex(6)}")
            tmp.write_bytes(archive)
            tmp.rename(path)
        return digest

    def check(self, digest: str) -> None:
        """That the program `digest` is here: stored, or sent as data (streamed, as the SDK sends
        a folder), then checked and kept."""
        path = self._path(digest)
        self.recent.name([digest])
        if path.exists():
            return
        try:
            blob = self.data.blob(digest) if self.data else None
        except NotFound:
            blob = None
        if blob is None:
            raise InvalidSpec(f"no program {digest} is stored here", field="program")
        with open(blob, "rb") as f:
            _check(f, "program")
        tmp = path.with_suffix(f".{secrets.token_hex(6)}")
        shutil.copyfile(blob, tmp)
        tmp.rename(path)

    def unpack(self, digest: str, dest: Path) -> str:
        """The program's folder under `dest`, unpacked once."""
        folder = dest / "program"
        if not folder.exists():
            with tarfile.open(self._path(digest), mode="r:gz") as tar:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4; members were checked on upload
                    tar.extractall(folder, filter="data")
                else:
                    tar.extractall(folder)
        return str(folder)

    def collect(self, needed: set[str], cutoff: float, dry_run: bool) -> tuple[int, int, set[str]]:
        """Remove the programs `needed` does not name, neither stored since `cutoff` nor named
        lately; returns (how many, bytes freed, their digests)."""
        gone, freed = set(), 0
        for path in self.root.glob("*.tar.gz"):
            digest = path.name.removesuffix(".tar.gz")
            swept = self.recent.sweep(path, digest, needed, cutoff, dry_run)
            if swept is not None:
                freed += swept
                gone.add(digest)
        return len(gone), freed, gone


def _check(archive: BinaryIO, field: str) -> None:
    """Refuse an archive that is no gzipped tar, or holds what could escape its folder or unpacks
    past the limits (read as it unpacks: a bomb stops early)."""
    try:
        with tarfile.open(fileobj=archive, mode="r:gz") as tar:
            unpacked = 0
            for count, member in enumerate(tar, start=1):
                if _escapes(member.name) or member.islnk() or (member.issym() and _escapes(member.linkname)) \
                        or not (member.isfile() or member.isdir() or member.issym()):
                    raise InvalidSpec(f"{member.name!r} points outside the folder or is not a file", field=field)
                unpacked += member.size
                if unpacked > MAX_UNPACKED or count > MAX_MEMBERS:
                    raise InvalidSpec(f"it unpacks to more than {MAX_UNPACKED} bytes or {MAX_MEMBERS} files, "
                                      "the limit of a program folder", field=field)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InvalidSpec(f"not a gzipped tar: {e}", field=field) from None


def _escapes(name: str) -> bool:
    return name.startswith("/") or ".." in Path(name).parts
