"""Move protoc's Python output into the client package, importable as
``sentiflow_client.v1``.

protoc runs with ``-Iproto`` into a scratch folder, so the generated modules import
each other as ``sentiflow.v1``; this step writes them into ``sentiflow_client/v1``
with only those Python import paths rewritten. The serialized descriptors, and so
the registered proto file names (``sentiflow/v1/x.proto``), the proto package
(``sentiflow.v1``) and the gRPC method paths, stay byte for byte what proto/ says.
The client distribution owns the generated code; the services import it from there.

    python clients/python/copy_generated.py \
        build/proto/sentiflow/v1 clients/python/sentiflow_client/v1
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

SOURCE_PACKAGE = "sentiflow.v1"
TARGET_PACKAGE = "sentiflow_client.v1"
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def relocate(text: str, source: str = SOURCE_PACKAGE, target: str = TARGET_PACKAGE) -> str:
    """The generated module with its Python imports moved from ``source`` to ``target``.

    Two forms name the Python package: ``from sentiflow.v1 import x_pb2`` and the
    module name handed to the builder (``'sentiflow.v1.x_pb2'``). The proto package
    has the same dotted name, so only these exact forms are touched, never a quoted
    message, service or method name such as ``'/sentiflow.v1.Classifier/Classify'``.
    """
    src = re.escape(source)
    text = re.sub(rf"^from {src} import ", f"from {target} import ", text, flags=re.MULTILINE)
    return re.sub(rf"'{src}\.(\w+_pb2(?:_grpc)?)'", rf"'{target}.\1'", text)


def copy_generated(source_dir: Path, target_dir: Path) -> list[Path]:
    """Write the relocated copy of every generated file; return the files written.

    Generated files in ``target_dir`` with no source any more are removed, so a proto
    file deleted upstream does not linger in the client.
    """
    target_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sources = sorted(p for p in source_dir.iterdir() if p.name.endswith(GENERATED))
    for path in sources:
        out = target_dir / path.name
        out.write_text(relocate(path.read_text(encoding="utf-8")), encoding="utf-8")
        written.append(out)
    names = {p.name for p in sources}
    for stale in target_dir.iterdir():
        if stale.name.endswith(GENERATED) and stale.name not in names:
            stale.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="protoc's output for proto/sentiflow/v1")
    parser.add_argument("target", type=Path, help="the client's generated package dir")
    args = parser.parse_args(argv)
    written = copy_generated(args.source, args.target)
    if not written:
        print(f"no generated files in {args.source}", file=sys.stderr)
        return 1
    print(f"{len(written)} files relocated to {TARGET_PACKAGE} in {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
