"""The committed stubs in abkit/v1 are exactly what the pinned grpcio-tools generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
GENERATED = ("assignment_pb2.py", "assignment_pb2.pyi", "assignment_pb2_grpc.py")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-Iproto",
            f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
    )  # fmt: skip
    for name in GENERATED:
        fresh = (tmp_path / "abkit" / "v1" / name).read_bytes()
        committed = (ROOT / "abkit" / "v1" / name).read_bytes()
        assert fresh == committed, f"abkit/v1/{name} is stale: run `make proto` and commit"
