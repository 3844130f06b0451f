"""A throwaway image registry (Debian's docker-registry) on 127.0.0.1, for the pull tests; `make
test` installs it (scripts/test-setup.sh). The engine takes a registry on loopback as insecure."""

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {base}/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@contextlib.contextmanager
def serve() -> Iterator[str]:
    """The registry's host:port while the block runs."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RuntimeError("docker-registry is missing; run scripts/test-setup.sh (make test does)")
    base = Path(tempfile.mkdtemp(prefix="jobnest-registry-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (base / "config.yml").write_text(CONFIG.format(base=base, port=port))
    log = open(base / "log", "wb")
    proc = subprocess.Popen([binary, "serve", str(base / "config.yml")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the registry did not start: {(base / 'log').read_text()[-1000:]}") from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        shutil.rmtree(base, ignore_errors=True)
