"""Program folders for `jobnest submit`: stored by content, refused when they would escape."""

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

import jobnest
from jobnest._data import program_archive
from jobnest_controller.programs import Programs

from .conftest import Running


def archive(build: Callable[[tarfile.TarFile], None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        build(tar)
    return buffer.getvalue()


def symlink_out(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("evil")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc"
    tar.addfile(info)


def dot_dot(tar: tarfile.TarFile) -> None:
    tar.addfile(tarfile.TarInfo("a/../../x"), io.BytesIO(b""))


def bomb(tar: tarfile.TarFile) -> None:
    """600 MiB of zeros, which gzip makes about 600 KiB: it unpacks past the limit."""
    info = tarfile.TarInfo("zeros")
    info.size = 600 * 2**20

    class Zeros:
        def read(self, n: int) -> bytes:
            return bytes(n)

    tar.addfile(info, Zeros())  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [archive(symlink_out), archive(dot_dot), b"not a tar at all", archive(bomb)],
                         ids=["link-out", "dot-dot", "not-a-tar", "gzip-bomb"])
def test_archives_that_escape_or_are_not_archives_are_refused(running: Running, bad: bytes) -> None:
    client = running.client()
    spec = client.spec(["python", "x.py"])
    spec.program_archive = bad
    with pytest.raises(jobnest.InvalidSpec, match=r"jobs\[0\]\.program_archive"):
        client.submit_many([spec])
    assert list(client.list()) == []
    assert not list((Path(running.controller.settings.home) / "programs").iterdir())


def folder_archive(folder: Path) -> bytes:
    buffer = io.BytesIO()
    program_archive(folder, buffer)
    return buffer.getvalue()


def test_the_same_folder_is_the_same_program(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print('hi')\n")
    (tmp_path / "src" / "__pycache__").mkdir()
    (tmp_path / "src" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    programs = Programs(str(tmp_path / "store"))
    first = programs.store(folder_archive(tmp_path / "src"))
    (tmp_path / "src" / "__pycache__" / "y.pyc").write_bytes(b"more junk")
    assert programs.store(folder_archive(tmp_path / "src")) == first  # caches are left out
    (tmp_path / "src" / "main.py").write_text("print('changed')\n")
    assert programs.store(folder_archive(tmp_path / "src")) != first
    folder = Path(programs.unpack(first, tmp_path / "run"))
    assert (folder / "main.py").read_text() == "print('hi')\n" and not (folder / "__pycache__").exists()
