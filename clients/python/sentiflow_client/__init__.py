"""Python clients for the sentiflow gRPC APIs, without the server's dependencies.

    from sentiflow_client import ClassifierClient, Tls

    with ClassifierClient("inference:50051", api_key="...", tls=Tls(ca_file="ca.crt")) as c:
        print(c.classify("$AAPL beats estimates")[0].label)

The messages are in :mod:`sentiflow_client.v1` (generated from proto/sentiflow/v1).
"""

from importlib.metadata import PackageNotFoundError, version

from sentiflow_client.channels import (
    RETRY_OVERLOAD,
    RETRY_UNAVAILABLE,
    RetryPolicy,
    Tls,
)
from sentiflow_client.classifier import AsyncClassifierClient, ClassifierClient
from sentiflow_client.feedback import AsyncFeedbackClient, FeedbackClient, signal_request

try:
    __version__ = version("sentiflow-client")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "RETRY_OVERLOAD",
    "RETRY_UNAVAILABLE",
    "AsyncClassifierClient",
    "AsyncFeedbackClient",
    "ClassifierClient",
    "FeedbackClient",
    "RetryPolicy",
    "Tls",
    "__version__",
    "signal_request",
]
