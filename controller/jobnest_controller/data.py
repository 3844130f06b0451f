"""Data between jobs: files stored once by their sha256 (blobs), and manifests that name them.

A run's output folder is stored when the run succeeds (`ingest`); an upload arrives blob by blob
over the DataService and is then named by a manifest (`put_manifest`). A manifest is canonical
JSON, {"files": {path: {"sha256": ..., "size": ..., "x": executable} or {"link": target}}}, plus
"file" for an upload of a single file; its sha256 is the digest that inputs, outputs and
signatures name. Blobs are copies, never links to a run's files. `materialise` lays a manifest
out once as a read-only folder for jobs to mount, of hard links to the blobs (an executable's to
its blob's executable twin: a file's mode belongs to all its links). Each byte is stored once: a
stored output folder is replaced by a link to its tree.

Nothing a job is given can write a blob (read-only mounts, file modes), but root on the host can:
a blob is checked against its digest before it is served or laid out (`verify`). What `gc`
removes is decided in `retention.py`; data named within `GRACE` (an upload in flight) stays.
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from jobnest.errors import Corrupt, InvalidSpec, NotFound

log = logging.getLogger(__name__)

CHUNK = 1 << 20
DIGEST_CHARS = set("0123456789abcdef")
GRACE = 600.0  # seconds: data this new, or named this recently, is never collected
MAX_VERIFIED = 1_000_000  # blobs remembered as checked (about 100 MB)
# A manifest entry, compact: (path, link target) or (path, sha256, size, executable).
Entry = tuple[str, str] | tuple[str, str, int, bool]
# A file's entry in a manifest's canonical JSON; never inside a string (its quotes would be escaped).
BLOB_REF = re.compile(r'"sha256":"([0-9a-f]{64})","size":\d+,"x":(true|false)')


class CorruptData(Corrupt):
    """A blob whose bytes changed; `manifests` named it (the outputs no run may be reused for)."""

    def __init__(self, digest: str, manifests: set[str]) -> None:
        super().__init__(f"stored blob {digest} is gone or no longer has its digest's bytes (changed on disk): "
                         "it was moved aside, and runs whose output held it are no longer reused", field="digest")
        self.manifests = manifests


class Recent:
    """Digests named lately (checked for, uploaded, read), so that `gc` spares data a request
    is about to rely on: naming and removing take the same lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.grace = GRACE
        self._named: dict[str, float] = {}

    def name(self, digests: Iterable[str]) -> None:
        now = time.time()
        with self.lock:
            for digest in digests:
                self._named[digest] = now
            if len(self._named) > 100_000:
                self._named = {d: t for d, t in self._named.items() if t > now - self.grace}

    def named(self, digest: str) -> bool:
        """Named within the grace; the caller holds the lock."""
        return self._named.get(digest, 0.0) > time.time() - self.grace

    def sweep(self, path: Path, digest: str, needed: set[str], cutoff: float, dry_run: bool) -> int | None:
        """Remove the stored `path` of `digest` unless it is needed, named lately or newer than
        `cutoff`; returns the bytes freed, or None if it stays."""
        with self.lock:
            if digest in needed or self.named(digest) or _newer(path, cutoff):
                return None
            return remove(path, dry_run)


def is_digest(text: str) -> bool:
    return len(text) == 64 and set(text) <= DIGEST_CHARS


class Data:
    def __init__(self, root: str, max_upload: int) -> None:
        self.root = Path(root)
        self.max_upload = max_upload
        self.recent = Recent()
        # A blob's digest (+ b"x" for a twin) -> the hash of its (inode, size, ctime) when it last
        # matched its digest; bytes, as a store's blobs may be many.
        self._verified: dict[bytes, int] = {}
        for folder in ("blobs", "manifests", "trees", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.trees = str(self.root / "trees")
        os.chmod(self.trees, 0o311)  # a tree is found by its digest, never listed (by a confined job)
        for left in (self.root / "tmp").iterdir():  # by a controller that stopped halfway
            _remove_tree(left) if left.is_dir() else left.unlink()

    def _tmp(self, digest: str) -> Path:
        return self.root / "tmp" / f"{digest}.{secrets.token_hex(6)}"

    # -- blobs ---------------------------------------------------------------------------------

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest

    def _twin(self, digest: str) -> Path:
        """The blob's executable copy, made when a tree first needs it."""
        return self.root / "blobs" / digest[:2] / f"{digest}.x"

    def missing(self, digests: list[str], size: int = 0) -> list[str]:
        """Which blobs are not here; `size`, the upload they are part of, is checked first."""
        self._check_size(size)
        for d in digests:
            if not is_digest(d):
                raise InvalidSpec(f"{d!r} is not a sha256 (64 hex digits)", field="digests")
        self.recent.name(digests)
        return [d for d in digests if not self._blob(d).exists()]

    def receive(self, chunks: Iterator[tuple[str, int, bytes]]) -> str:
        """Store one uploaded blob from (digest, size, data) chunks; the first names the blob."""
        first = next(chunks, None)
        if first is None:
            raise InvalidSpec("an upload needs at least one chunk", field="digest")
        digest, size, data = first
        if not is_digest(digest):
            raise InvalidSpec(f"{digest!r} is not a sha256 (64 hex digits)", field="digest")
        self._check_size(size)
        tmp = self._tmp(digest)
        hasher, received = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                while True:
                    received += len(data)
                    if received > size:
                        raise InvalidSpec(f"more than the {size} bytes announced", field="data")
                    hasher.update(data)
                    f.write(data)
                    following = next(chunks, None)
                    if following is None:
                        break
                    data = following[2]
            if received != size:
                raise InvalidSpec(f"{received} bytes arrived, not the {size} announced", field="data")
            if hasher.hexdigest() != digest:
                raise InvalidSpec(f"the bytes have sha256 {hasher.hexdigest()}, not {digest}", field="digest")
            self._keep(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def _check_size(self, size: int) -> None:
        if size > self.max_upload:
            raise InvalidSpec(f"{size} bytes is over the upload limit of {self.max_upload}", field="size")

    def _keep(self, tmp: Path, digest: str) -> None:
        if not self._present(digest):
            tmp.chmod(0o444)
            _move_in(tmp, self._blob(digest))
            self._mark(self._blob(digest))

    def _present(self, digest: str) -> bool:
        """Whether the blob is here; then it is named, so that `gc` spares it for what is about
        to name it. (A new blob needs no naming: it is younger than the grace.)"""
        if not self._blob(digest).exists():
            return False
        self.recent.name([digest])
        return self._blob(digest).exists()

    def _mark(self, path: Path | str, st: os.stat_result | None = None) -> None:
        """`path` matches its digest (it was just written from bytes hashed on the way, or
        hashed): it needs no verifying until its inode changes."""
        st = st or os.stat(path)
        if len(self._verified) >= MAX_VERIFIED:  # a bound on memory: what is forgotten is hashed again
            self._verified.clear()
        self._verified[_key(path)] = hash((st.st_ino, st.st_size, st.st_ctime_ns))

    def blob(self, digest: str) -> Path:
        """A stored blob's file, checked against its digest (`verify`)."""
        if not (is_digest(digest) and self._present(digest)):
            raise NotFound(f"no blob {digest}", field="digest")
        self.verify([(digest, False)])
        return self._blob(digest)

    def open_blob(self, digest: str) -> Iterator[bytes]:
        with open(self.blob(digest), "rb") as f:
            while data := f.read(CHUNK):
                yield data

    # -- verification --------------------------------------------------------------------------

    def verify(self, refs: Iterable[tuple[str, bool]]) -> None:
        """Check blobs against their digests, each (digest, executable) with its executable twin
        if it has one; a corrupt one is moved aside and `CorruptData` names it. A file is hashed
        again only once its inode changed (its ctime, which no one can set back); else it costs
        one stat."""
        blobs = str(self.root / "blobs")
        bad = []
        for digest, executable in refs:
            for twin in (False, True) if executable else (False,):
                path = f"{blobs}/{digest[:2]}/{digest}{'.x' if twin else ''}"
                try:
                    st = os.stat(path)
                except FileNotFoundError:  # a twin is made when first needed; a blob must be there
                    if not twin:
                        bad.append(digest)
                    continue
                if self._verified.get(_key(path)) != hash((st.st_ino, st.st_size, st.st_ctime_ns)):
                    if _sha256(path) != digest:
                        bad.append(digest)
                        continue
                    self._mark(path, st)
        if bad:
            raise CorruptData(bad[0], self.quarantine(bad))

    def intact(self, digest: str) -> str:
        """Check every blob the data `digest` names (`verify`); returns its "file" (for an
        upload of one file). The manifest is scanned, not parsed: a big one costs its text only."""
        text = self._manifest_text(digest)
        self.verify((m[1], m[2] == "true") for m in BLOB_REF.finditer(text))
        return str(json.loads(text[:text.index(',"files":')] + "}")["file"]) if text.startswith('{"file":') else ""

    def quarantine(self, digests: list[str]) -> set[str]:
        """Move corrupt blobs aside, with the trees that link them; returns the manifests that
        named them."""
        aside = self.root / "corrupt"
        aside.mkdir(exist_ok=True)
        for digest in digests:
            for path in (self._blob(digest), self._twin(digest)):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(path, aside / f"{path.name}.{secrets.token_hex(4)}")
                self._verified.pop(_key(path), None)
        named = set()
        for kept in (self.root / "manifests").glob("*.json"):  # rare: a scan, not an index
            if any(m[1] in digests for m in BLOB_REF.finditer(kept.read_text())):
                named.add(kept.stem)
                tree = self.root / "trees" / kept.stem
                if tree.exists():
                    _remove_tree(tree)
        log.error("corrupt blobs %s moved to %s; data naming them: %s", digests, aside, sorted(named))
        return named

    def _store_file(self, path: Path) -> tuple[str, int]:
        """Keep a file of a run's output as a blob, hashing the copy made (what is stored). A
        small file is read once, and written only if no blob has its content yet."""
        with open(path, "rb") as src:
            head = src.read(CHUNK)
            if len(head) < CHUNK:
                digest = hashlib.sha256(head).hexdigest()
                blob = self._blob(digest)
                if not self._present(digest):
                    tmp = self._tmp("out")
                    try:
                        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)  # read-only from the start
                        with open(fd, "wb") as dst:
                            dst.write(head)
                        _move_in(tmp, blob)
                        self._mark(blob)
                    except BaseException:
                        tmp.unlink(missing_ok=True)
                        raise
                return digest, len(head)
            tmp = self._tmp("out")
            hasher, size = hashlib.sha256(), 0
            try:
                with open(tmp, "wb") as dst:
                    data = head
                    while data:
                        hasher.update(data)
                        dst.write(data)
                        size += len(data)
                        data = src.read(CHUNK)
                digest = hasher.hexdigest()
                self._keep(tmp, digest)
            finally:
                tmp.unlink(missing_ok=True)
        return digest, size

    # -- manifests -----------------------------------------------------------------------------

    def put_manifest(self, files: dict[str, dict[str, Any]], file: str = "") -> str:
        """Check and keep an upload's manifest; returns its digest. It is held to the upload limit."""
        sizes = {}  # what the upload holds: each content once
        self.recent.name(e["sha256"] for e in files.values() if "sha256" in e)
        links = {path for path, entry in files.items() if "link" in entry}
        for path, entry in files.items():
            where = f"entries[{path!r}]"
            _check_path(path, where)
            if "link" in entry:
                _check_link(path, entry["link"], links, where)
                continue
            blob = self._blob(entry["sha256"]) if is_digest(entry["sha256"]) else None
            if blob is None or not blob.exists():
                raise InvalidSpec(f"blob {entry['sha256']!r} was not uploaded", field=where)
            if blob.stat().st_size != entry["size"]:
                raise InvalidSpec(f"blob {entry['sha256']} has {blob.stat().st_size} bytes, not {entry['size']}",
                                  field=where)
            sizes[entry["sha256"]] = entry["size"]
        folders = {str(p) for path in files for p in PurePosixPath(path).parents}
        clash = sorted(folders & set(files))
        if clash:
            raise InvalidSpec(f"{clash[0]!r} is both a file and a folder", field="entries")
        if file and set(files) != {file}:
            raise InvalidSpec(f"an upload of one file holds just that file, {file!r}", field="file")
        self._check_size(sum(sizes.values()))
        laid_out = sum(e.get("size", 0) for e in files.values())  # what a job's input folder holds
        if laid_out > self.max_upload:
            raise InvalidSpec(f"its files add up to {laid_out} bytes (the same content counted each time it is "
                              f"named), over the upload limit of {self.max_upload}", field="entries")
        return self._keep_manifest(sorted(_entries(files)), file)

    def _keep_manifest(self, entries: list[Entry], file: str = "") -> str:
        """Write a manifest of `entries` (sorted by path) as canonical JSON (what `json.dumps`
        with sorted keys and no spaces makes), hashing it as it is written: a big output's
        manifest is never held whole."""
        tmp = self._tmp("manifest")
        hasher = hashlib.sha256()
        with open(tmp, "w") as f:
            def put(text: str) -> None:
                f.write(text)
                hasher.update(text.encode())
            put(f'{{"file":{json.dumps(file)},"files":{{' if file else '{"files":{')
            for i in range(0, len(entries), 1000):
                put(("," if i else "") + ",".join(f"{json.dumps(e[0])}:" + (
                    f'{{"link":{json.dumps(e[1])}}}' if len(e) == 2 else
                    f'{{"sha256":"{e[1]}","size":{e[2]},"x":{"true" if e[3] else "false"}}}')
                    for e in entries[i:i + 1000]))
            put("}}")
        digest = hasher.hexdigest()
        self.recent.name([digest])
        kept = self.root / "manifests" / f"{digest}.json"
        if kept.exists():
            tmp.unlink()
        else:
            os.replace(tmp, kept)
        return digest

    def manifest(self, digest: str) -> dict[str, Any]:
        return dict(json.loads(self._manifest_text(digest)))

    def _manifest_text(self, digest: str) -> str:
        try:
            if is_digest(digest):
                self.recent.name([digest])
                return (self.root / "manifests" / f"{digest}.json").read_text()
        except FileNotFoundError:
            pass
        raise NotFound(f"no data {digest} is stored here", field="digest")

    def ingest(self, folder: Path) -> str:
        """Store a run's output folder, and make it a link to the stored tree; returns its
        manifest's digest. Its files are stored as they are read, so only its links are checked
        (they must stay inside). Stored again after a stop halfway, it is stored alike. Each file
        costs about 650 bytes of memory while it is stored (100,000 files: 64 MiB)."""
        aside = folder.with_name(f"{folder.name}.stored")  # the folder, until the link replaces it
        if aside.exists():
            if folder.exists() or folder.is_symlink():  # the link is in place: what was stored
                _remove_tree(aside)
            else:
                aside.rename(folder)
        entries: list[Entry] = []
        for rel, entry in _walk(str(folder)):
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                entries.append((rel, os.readlink(entry.path)))
            elif stat.S_ISREG(mode):
                entries.append((rel, *self._store_file(Path(entry.path)), bool(mode & 0o111)))
            elif not stat.S_ISDIR(mode):
                raise InvalidSpec(f"{rel!r} is not a file, a folder or a link", field="output")
        entries.sort()
        links = {e[0] for e in entries if len(e) == 2}
        for e in entries:
            if len(e) == 2:
                _check_link(e[0], e[1], links, f"entries[{e[0]!r}]")
        digest = self._keep_manifest(entries)
        tree = self._lay_out(digest, entries)
        if not folder.is_symlink():
            folder.rename(aside)
            folder.symlink_to(tree)
            try:
                _remove_tree(aside)
            except OSError as e:  # a file a container's root made, say
                log.warning("could not remove %s after storing it: %s", aside, e)
        return digest

    def materialise(self, digest: str) -> Path:
        """The manifest's files as a read-only folder, built once and verified each time; for a
        one-file upload, the file."""
        tree = self.root / "trees" / digest
        if tree.exists():
            file = self.intact(digest)
        else:
            manifest = self.manifest(digest)
            file = manifest.get("file", "")
            self._lay_out(digest, sorted(_entries(manifest["files"])))
        return tree / file if file else tree

    def _lay_out(self, digest: str, entries: list[Entry]) -> Path:
        """Verify the blobs of `entries` and lay them out as the tree of `digest`, if not yet."""
        self.verify((e[1], e[3]) for e in entries if len(e) == 4)
        tree = self.root / "trees" / digest
        if tree.exists():
            return tree
        tmp = self._tmp(digest)
        tmp.mkdir()
        for e in entries:
            if len(e) == 4 and e[3] and not self._twin(e[1]).exists():
                tmp_twin = self._tmp(e[1])
                shutil.copyfile(self._blob(e[1]), tmp_twin)
                tmp_twin.chmod(0o555)
                os.replace(tmp_twin, self._twin(e[1]))
                self._mark(self._twin(e[1]))
        folders = sorted({str(p) for e in entries for p in PurePosixPath(e[0]).parents} - {"."})
        for folder in folders:  # parents before their children
            (tmp / folder).mkdir()
        for e in entries:
            if len(e) == 2:
                (tmp / e[0]).symlink_to(e[1])
            else:
                os.link(self._twin(e[1]) if e[3] else self._blob(e[1]), tmp / e[0])
        for folder in reversed(folders):
            (tmp / folder).chmod(0o555)
        tmp.chmod(0o555)
        try:
            tmp.rename(tree)
        except OSError:  # built meanwhile by another
            _remove_tree(tmp)
        return tree

    # -- retention -----------------------------------------------------------------------------

    def collect(self, needed: set[str], cutoff: float, dry_run: bool) -> tuple[int, int, int, set[str]]:
        """Remove the manifests (with their trees) and blobs that `needed` does not name, neither
        stored since `cutoff` nor named lately; returns (manifests, blobs, bytes freed, their
        digests). Manifests go first: the blobs the kept ones name are needed too."""
        gone: set[str] = set()
        manifests, blobs, freed = 0, 0, 0
        needed_blobs: set[str] = set()
        for kept in (self.root / "manifests").glob("*.json"):
            digest = kept.stem
            swept = self.recent.sweep(kept, digest, needed, cutoff, dry_run)
            if swept is None:
                with contextlib.suppress(FileNotFoundError):
                    needed_blobs.update(m[1] for m in BLOB_REF.finditer(kept.read_text()))
                continue
            freed += swept
            manifests += 1
            gone.add(digest)
            tree = self.root / "trees" / digest
            if tree.exists():
                remove(tree, dry_run)
        for path in (self.root / "blobs").glob("*/*"):
            digest = path.name.removesuffix(".x")
            swept = self.recent.sweep(path, digest, needed_blobs, cutoff, dry_run)
            if swept is None:
                continue
            freed += swept
            self._verified.pop(_key(path), None)
            if path.suffix != ".x":
                blobs += 1
                gone.add(digest)
        for path in (self.root / "corrupt").glob("*"):  # kept a while, for whoever looks into it
            if not _newer(path, cutoff):
                freed += remove(path, dry_run)
        return manifests, blobs, freed, gone


def _newer(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime >= cutoff
    except FileNotFoundError:
        return True  # gone already: nothing to remove


def remove(path: Path, dry_run: bool = False) -> int:
    """Remove a file or a folder (read-only ones too); returns the bytes this frees (a file
    other links still hold frees none)."""
    folder = path.is_dir() and not path.is_symlink()
    paths = [path, *(os.path.join(top, name) for top, _, files in os.walk(path) for name in files)] if folder \
        else [path]
    freed = 0
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                freed += st.st_blocks * 512
    if dry_run:
        return freed
    if folder:
        _remove_tree(path)
    else:
        path.unlink(missing_ok=True)
    return freed


def _move_in(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`, making its folder the first time."""
    try:
        os.replace(tmp, path)
    except FileNotFoundError:
        path.parent.mkdir(exist_ok=True)
        os.replace(tmp, path)


def _walk(folder: str, prefix: str = "") -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(relative path, entry) of everything below `folder`, not following links."""
    with os.scandir(folder) as found:
        entries = list(found)
    for entry in entries:
        rel = prefix + entry.name
        yield rel, entry
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path, rel + "/")


def _check_path(path: str, where: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise InvalidSpec("must be a relative path without '.', '..' or empty parts", field=where)


def _check_link(path: str, target: str, links: set[str], where: str) -> None:
    """A link must stay inside the data, and not through another link (which could lead out)."""
    parts = list(PurePosixPath(path).parent.parts)
    inside = bool(target) and not target.startswith("/") and "\0" not in target
    for part in PurePosixPath(target).parts if inside else ():
        if "/".join(parts) in links or (part == ".." and not parts):
            inside = False
            break
        if part == "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    if not inside:
        raise InvalidSpec(f"a link must point inside the data, and not through another link, not to {target!r}",
                          field=where)


def _entries(files: dict[str, dict[str, Any]]) -> Iterator[Entry]:
    for path, e in files.items():
        yield (path, e["link"]) if "link" in e else (path, e["sha256"], e["size"], e["x"])


def _key(path: str | Path) -> bytes:
    name = os.path.basename(path)  # the digest, and ".x" for a twin
    return bytes.fromhex(name[:64]) + name[64:].encode()


def _sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _remove_tree(folder: Path) -> None:
    folder.chmod(0o755)
    for top, dirs, _ in os.walk(folder):  # links are not followed
        for name in dirs:
            if not os.path.islink(os.path.join(top, name)):
                os.chmod(os.path.join(top, name), 0o755)
    shutil.rmtree(folder)
