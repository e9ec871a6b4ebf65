"""The generated code lives in the client distribution, importable as ``sentiflow_client.v1``.

protoc writes it with ``-Iproto`` into a scratch folder and ``copy_generated.py``
moves it into the client with its Python imports rewritten; these tests pin down
that only the imports moved, not the contracts.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType

from google.protobuf import descriptor_pool
from sentiflow_client.v1 import classifier_pb2, events_pb2, feedback_pb2

from tests.support.paths import REPO_ROOT

CLIENT_DIR = REPO_ROOT / "clients" / "python"


def _copy_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "copy_generated", CLIENT_DIR / "copy_generated.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_registered_names_are_the_contracts() -> None:
    """The Python package moved; what goes on the wire and into the descriptor pool
    did not: proto file names and the proto package stay those of proto/."""
    for module in (events_pb2, classifier_pb2, feedback_pb2):
        assert module.DESCRIPTOR.name.startswith("sentiflow/v1/")
        assert module.DESCRIPTOR.package == "sentiflow.v1"
    pool = descriptor_pool.Default()
    assert pool.FindFileByName("sentiflow/v1/classifier.proto") is classifier_pb2.DESCRIPTOR
    assert pool.FindMessageTypeByName("sentiflow.v1.Document").name == "Document"


def test_relocation_moves_python_imports_only() -> None:
    relocate = _copy_tool().relocate
    source = (
        "from sentiflow.v1 import events_pb2 as sentiflow_dot_v1_dot_events__pb2\n"
        "_builder.Build(DESCRIPTOR, 'sentiflow.v1.classifier_pb2', g)\n"
        "channel.unary_unary('/sentiflow.v1.Classifier/Classify')\n"
        "server.add_registered_method_handlers('sentiflow.v1.Classifier', handlers)\n"
    )
    assert relocate(source).splitlines() == [
        "from sentiflow_client.v1 import events_pb2 as sentiflow_dot_v1_dot_events__pb2",
        "_builder.Build(DESCRIPTOR, 'sentiflow_client.v1.classifier_pb2', g)",
        "channel.unary_unary('/sentiflow.v1.Classifier/Classify')",
        "server.add_registered_method_handlers('sentiflow.v1.Classifier', handlers)",
    ]


def test_the_client_loads_nothing_of_the_server() -> None:
    """Importing and using the client pulls in grpc and protobuf, nothing sentiflow
    serves with (its distribution depends on those two alone)."""
    code = (
        "import sys\n"
        "import sentiflow_client\n"
        "from sentiflow_client import AsyncFeedbackClient, ClassifierClient, Tls\n"
        "from sentiflow_client.v1 import classifier_pb2, events_pb2, feedback_pb2_grpc\n"
        "ClassifierClient('127.0.0.1:1').close()\n"
        "heavy = ('sentiflow', 'services', 'stack', 'torch', 'onnxruntime', 'faust',\n"
        "         'confluent_kafka', 'redis', 'pydantic', 'transformers')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
