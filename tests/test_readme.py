"""The README's Python snippets run as written, one after another as a reader would paste them
(the later ones use the first one's `client`), against a real controller."""

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import ADMIN, Running

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_s_python_snippets_run(running: Running, tmp_path: Path) -> None:
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(snippets) >= 3
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.csv").write_text("# x,y\n1,2\n3,4\n")
    program = "\n".join(snippets) + "\nprint('best:', best.info.name)\nprint(b.wait().logs().strip())\n"
    env = {**os.environ, "JOBNEST_CONTROLLER": running.address, "JOBNEST_TOKEN": ADMIN}
    done = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "succeeded 0 hi" and lines[1].startswith(" ")  # the logs end with a newline
    assert "{'rows': 2}" in lines and "best: try-2" in lines and lines[-1] == "made"
    assert (tmp_path / "here" / "result.json").read_text().strip() == '{"rows": 2}'
