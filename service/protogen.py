"""Compile protos/ into the gitignored package service/_proto/ (grpc_tools.protoc).

The .proto files are the only source of the wire API; their Python modules are build output and
never committed. Two callers: setup.py's build_py hook (wheels and editable installs) and
`service.proto` at import time, which recompiles a source checkout whose generated modules are
missing or older than the .proto files. This module imports nothing from the project, so setup.py
can load it by path before the project is installed.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path

PACKAGE = "service._proto"
STAMP = "SOURCE_SHA256"


def proto_files(proto_root: Path) -> list[Path]:
    return sorted(p for p in proto_root.rglob("*.proto"))


def source_hash(proto_root: Path) -> str:
    """Hash of every .proto path and content: the generated modules are fresh when it matches."""
    digest = hashlib.sha256()
    for path in proto_files(proto_root):
        digest.update(path.relative_to(proto_root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def is_fresh(proto_root: Path, out_dir: Path) -> bool:
    stamp = out_dir / STAMP
    return stamp.is_file() and stamp.read_text().strip() == source_hash(proto_root)


def compile_protos(proto_root: Path, out_dir: Path) -> None:
    """Generate *_pb2.py / *_pb2_grpc.py for every .proto under proto_root into out_dir.

    protoc writes `from riva.proto import ...`; the imports are rewritten to live under
    `service._proto` so the generated `riva` package never shadows nvidia-riva-client's `riva`.
    Written to a temporary folder and moved into place, so a concurrent importer never sees half.
    """
    from grpc_tools import protoc  # build-time dependency (pyproject build-system requires)

    proto_root, out_dir = Path(proto_root).resolve(), Path(out_dir).resolve()
    files = proto_files(proto_root)
    if not files:
        raise FileNotFoundError(f"no .proto files under {proto_root}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="._proto.", dir=out_dir.parent))
    try:
        include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
        args = ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={tmp}",
                f"--grpc_python_out={tmp}", *[str(f) for f in files]]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto_root}")
        top_packages = sorted({f.relative_to(proto_root).parts[0] for f in files})
        pattern = re.compile(rf"^(from|import) ({'|'.join(map(re.escape, top_packages))})([. ])", re.M)
        for path in tmp.rglob("*.py"):
            path.write_text(pattern.sub(rf"\1 {PACKAGE}.\2\3", path.read_text()))
        for folder in [tmp, *[p for p in tmp.rglob("*") if p.is_dir()]]:
            (folder / "__init__.py").touch()
        (tmp / STAMP).write_text(source_hash(proto_root) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
