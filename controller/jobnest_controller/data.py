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


def is_digest(text: str) -> bool:
    return len(text) == 64 and set(text) <= DIGEST_CHARS


class Data:
    def __init__(self, root: str, max_upload: int) -> None:
        self.root = Path(root)
        self.max_upload = max_upload
        self.recent = Recent()
        self._verified: dict[str, tuple[int, int, int]] = {}  # blob -> (inode, size, ctime) when it last matched
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
        self.recent.name([digest])
        path = self._blob(digest)
        if not path.exists():
            tmp.chmod(0o444)
            _move_in(tmp, path)
            self._mark(path)

    def _mark(self, path: Path) -> None:
        """`path` was just written from bytes hashed on the way: it needs no verifying yet."""
        st = path.stat()
        self._verified[str(path)] = (st.st_ino, st.st_size, st.st_ctime_ns)

    def open_blob(self, digest: str) -> Iterator[bytes]:
        if not (is_digest(digest) and self._blob(digest).exists()):
            raise NotFound(f"no blob {digest}", field="digest")
        self.verify([digest])
        with open(self._blob(digest), "rb") as f:
            while data := f.read(CHUNK):
                yield data

    # -- verification --------------------------------------------------------------------------

    def verify(self, digests: Iterable[str], twins: Iterable[str] = ()) -> None:
        """Check blobs (and the executable twins of `twins`) against their digests; a corrupt one
        is moved aside and `CorruptData` names it. A file is hashed again only once its inode
        changed (its ctime, which no one can set back); else it costs one stat."""
        blobs = str(self.root / "blobs")
        bad = []
        for digest, twin in [*((d, False) for d in digests), *((d, True) for d in twins)]:
            path = f"{blobs}/{digest[:2]}/{digest}{'.x' if twin else ''}"
            try:
                st = os.stat(path)
            except FileNotFoundError:  # a twin is made when first needed; a blob must be there
                if not twin:
                    bad.append(digest)
                continue
            mark = (st.st_ino, st.st_size, st.st_ctime_ns)
            if self._verified.get(path) != mark:
                if _sha256(path) != digest:
                    bad.append(digest)
                    continue
                self._verified[path] = mark
        if bad:
            raise CorruptData(bad[0], self.quarantine(bad))

    def intact(self, digest: str) -> dict[str, Any]:
        """The manifest of the data `digest`, once every blob it names is checked (`verify`)."""
        manifest = self.manifest(digest)
        files = manifest["files"].values()
        self.verify((e["sha256"] for e in files if "sha256" in e), (e["sha256"] for e in files if e.get("x")))
        return manifest

    def quarantine(self, digests: list[str]) -> set[str]:
        """Move corrupt blobs aside, with the trees that link them; returns the manifests that
        named them."""
        aside = self.root / "corrupt"
        aside.mkdir(exist_ok=True)
        for digest in digests:
            for path in (self._blob(digest), self._twin(digest)):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(path, aside / f"{path.name}.{secrets.token_hex(4)}")
                self._verified.pop(str(path), None)
        named = set()
        for kept in (self.root / "manifests").glob("*.json"):  # rare: a scan, not an index
            files = json.loads(kept.read_text())["files"].values()
            if any(e.get("sha256") in digests for e in files):
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
                self.recent.name([digest])
                blob = self._blob(digest)
                if not blob.exists():
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
        for path, entry in files.items():
            where = f"entries[{path!r}]"
            _check_path(path, where)
            if "link" in entry:
                _check_link(path, entry["link"], files, where)
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
        return self._keep_manifest(files, file)

    def _keep_manifest(self, files: dict[str, dict[str, Any]], file: str = "") -> str:
        manifest = {"files": files, **({"file": file} if file else {})}
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).hexdigest()
        self.recent.name([digest])
        kept = self.root / "manifests" / f"{digest}.json"
        if not kept.exists():
            tmp = self._tmp(digest)
            tmp.write_text(text)
            os.replace(tmp, kept)
        return digest

    def manifest(self, digest: str) -> dict[str, Any]:
        try:
            if is_digest(digest):
                self.recent.name([digest])
                return dict(json.loads((self.root / "manifests" / f"{digest}.json").read_text()))
        except FileNotFoundError:
            pass
        raise NotFound(f"no data {digest} is stored here", field="digest")

    def ingest(self, folder: Path) -> str:
        """Store a run's output folder; returns its manifest's digest. Its files are stored as
        they are read, so only its links are checked (they must stay inside)."""
        files: dict[str, dict[str, Any]] = {}
        for rel, entry in _walk(str(folder)):
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                files[rel] = {"link": os.readlink(entry.path)}
            elif stat.S_ISREG(mode):
                digest, size = self._store_file(Path(entry.path))
                files[rel] = {"sha256": digest, "size": size, "x": bool(mode & 0o111)}
            elif not stat.S_ISDIR(mode):
                raise InvalidSpec(f"{rel!r} is not a file, a folder or a link", field="output")
        for rel, entry in files.items():
            if "link" in entry:
                _check_link(rel, entry["link"], files, f"entries[{rel!r}]")
        digest = self._keep_manifest(files)
        del files  # a big output's manifest is read again to lay it out: not held twice
        tree = self.materialise(digest)
        aside = folder.with_name(f"{folder.name}.stored")  # the folder becomes a link to what was stored
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
        manifest = self.intact(digest)
        tree = self.root / "trees" / digest
        if not tree.exists():
            tmp = self._tmp(digest)
            tmp.mkdir()
            for entry in manifest["files"].values():
                if entry.get("x") and not self._twin(entry["sha256"]).exists():
                    tmp_twin = self._tmp(entry["sha256"])
                    shutil.copyfile(self._blob(entry["sha256"]), tmp_twin)
                    tmp_twin.chmod(0o555)
                    os.replace(tmp_twin, self._twin(entry["sha256"]))
                    self._mark(self._twin(entry["sha256"]))
            folders = sorted({str(p) for rel in manifest["files"] for p in PurePosixPath(rel).parents} - {"."})
            for folder in folders:  # parents before their children
                (tmp / folder).mkdir()
            for rel, entry in manifest["files"].items():
                path = tmp / rel
                if "link" in entry:
                    path.symlink_to(entry["link"])
                else:
                    os.link(self._twin(entry["sha256"]) if entry["x"] else self._blob(entry["sha256"]), path)
            for folder in reversed(folders):
                (tmp / folder).chmod(0o555)
            tmp.chmod(0o555)
            try:
                tmp.rename(tree)
            except OSError:  # built meanwhile by another
                _remove_tree(tmp)
        return tree / manifest["file"] if manifest.get("file") else tree


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
            with self.recent.lock:
                if digest in needed or self.recent.named(digest) or _newer(kept, cutoff):
                    with contextlib.suppress(FileNotFoundError, ValueError):
                        needed_blobs.update(e["sha256"] for e in json.loads(kept.read_text())["files"].values()
                                            if "sha256" in e)
                    continue
                freed += remove(kept, dry_run)
            manifests += 1
            gone.add(digest)
            tree = self.root / "trees" / digest
            if tree.exists():
                remove(tree, dry_run)
        for path in (self.root / "blobs").glob("*/*"):
            digest = path.name.removesuffix(".x")
            with self.recent.lock:
                if digest in needed_blobs or self.recent.named(digest) or _newer(path, cutoff):
                    continue
                freed += remove(path, dry_run)
            self._verified.pop(str(path), None)
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


def _check_link(path: str, target: str, files: dict[str, dict[str, Any]], where: str) -> None:
    """A link must stay inside the data, and not through another link (which could lead out)."""
    parts = list(PurePosixPath(path).parent.parts)
    inside = bool(target) and not target.startswith("/") and "\0" not in target
    for part in PurePosixPath(target).parts if inside else ():
        through = files.get("/".join(parts), {})
        if "link" in through or (part == ".." and not parts):
            inside = False
            break
        if part == "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    if not inside:
        raise InvalidSpec(f"a link must point inside the data, and not through another link, not to {target!r}",
                          field=where)


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
