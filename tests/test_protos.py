"""The committed generated code matches protos/: regenerate and compare byte for byte."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                    str(ROOT / "protos/jobnest/v1/jobnest.proto")], check=True)
    for name in ("jobnest_pb2.py", "jobnest_pb2.pyi", "jobnest_pb2_grpc.py"):
        fresh = (tmp_path / "jobnest/v1" / name).read_bytes()
        committed = (ROOT / "sdk/jobnest/v1" / name).read_bytes()
        assert fresh == committed, f"sdk/jobnest/v1/{name} is stale: run `make protos`"
