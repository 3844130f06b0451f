"""Program folders of runner jobs (`jobnest submit program.py`), stored by content.

The server stores an uploaded archive once under its sha256; the reconciler unpacks it into a
run's work dir, where the executor makes it the job's working directory.
"""

import hashlib
import io
import tarfile
from pathlib import Path

from jobnest.errors import InvalidSpec

from .data import Recent, is_digest

MAX_ARCHIVE = 64 * 2**20
MAX_UNPACKED, MAX_MEMBERS = 512 * 2**20, 100_000  # what an archive may unpack to, in bytes and files


class Programs:
    def __init__(self, root: str, recent: Recent | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.recent = recent or Recent()  # the data's: naming a program keeps it from `collect` too

    def _path(self, digest: str) -> Path:
        if not is_digest(digest):  # never a path out of the store
            raise InvalidSpec(f"{digest[:80]!r} is not a program's digest (64 hex digits)", field="program")
        return self.root / f"{digest}.tar.gz"

    def store(self, archive: bytes) -> str:
        """Keep an uploaded archive; returns its digest."""
        if len(archive) > MAX_ARCHIVE:
            raise InvalidSpec(f"{len(archive)} bytes is over the limit of {MAX_ARCHIVE}", field="program_archive")
        try:
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                unpacked = 0
                for count, member in enumerate(tar, start=1):  # read as it unpacks: a bomb stops early
                    if _escapes(member.name) or member.islnk() or (member.issym() and _escapes(member.linkname)) \
                            or not (member.isfile() or member.isdir() or member.issym()):
                        raise InvalidSpec(f"{member.name!r} points outside the folder or is not a file",
                                          field="program_archive")
                    unpacked += member.size
                    if unpacked > MAX_UNPACKED or count > MAX_MEMBERS:
                        raise InvalidSpec(f"it unpacks to more than {MAX_UNPACKED} bytes or {MAX_MEMBERS} files, "
                                          "the limit of a program folder", field="program_archive")
        except (tarfile.TarError, OSError) as e:
            raise InvalidSpec(f"not a gzipped tar: {e}", field="program_archive") from None
        digest = hashlib.sha256(archive).hexdigest()
        self.recent.name([digest])
        path = self._path(digest)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(archive)
            tmp.rename(path)
        return digest

    def check(self, digest: str) -> None:
        path = self._path(digest)
        self.recent.name([digest])
        if not path.exists():
            raise InvalidSpec(f"no program {digest} is stored here", field="program")

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


def _escapes(name: str) -> bool:
    return name.startswith("/") or ".." in Path(name).parts
