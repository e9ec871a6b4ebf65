"""Process lifecycle: turning SIGTERM and SIGINT into a graceful stop.

Kubernetes stops a pod with SIGTERM, which Python does not turn into an exception:
without a handler a ``finally:`` never runs and in-flight work is neither finished
nor committed.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


def install_stop_handlers(stop: threading.Event, on_stop: Callable[[], None] | None = None) -> None:
    """Set ``stop`` on SIGTERM/SIGINT; a second signal exits at once."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(128 + signum)
        log.info("%s received: stopping gracefully", signal.Signals(signum).name)
        stop.set()
        if on_stop is not None:
            on_stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
