"""What every connector is: something that runs until stopped or done."""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from services.ingest.publisher import Publisher

log = logging.getLogger(__name__)


class ConnectorError(RuntimeError):
    """A connector cannot go on (e.g. a delivery failed for good); restart resumes."""


class Connector(Protocol):
    name: str

    def run(self, stop: threading.Event) -> None:
        """Read the channel until ``stop`` is set (or, for one-shot sources, until done
        and acknowledged)."""


def drain(publisher: Publisher, stop: threading.Event, timeout_s: float) -> bool:
    """Wait until everything handed to the publisher is finished.

    Unbounded while running (one-shot sources are done only when acknowledged);
    bounded by ``timeout_s`` once ``stop`` is set. False if it gave up.
    """
    deadline: float | None = None
    while not publisher.wait_idle(timeout=0.2):
        if not publisher.alive():
            return False
        if stop.is_set():
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout_s
            elif now > deadline:
                log.warning("stopping with batches unacknowledged (not checkpointed)")
                return False
    return True
