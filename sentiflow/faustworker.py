"""Running a Faust app as a service process, the same way for every Faust service."""

from __future__ import annotations

import logging
import os
import threading
from importlib.util import find_spec

import faust

log = logging.getLogger(__name__)

# Faust hangs forever on shutdown if an agent blocks; past this the process just exits
# (safe: offsets and changelogs are in Kafka).
HARD_STOP_AFTER_S = 15.0


def preflight() -> bool:
    """Quiet Faust's flow-control warnings and check that lz4 can be decoded."""
    # With producer_max_batch_size=1 Faust's buffer is "full" on every burst and it
    # warns each time: that is flow control doing its job, not something to act on.
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    if find_spec("cramjam") is None:
        # The other services produce lz4-compressed batches; aiokafka reads them only
        # with cramjam installed, and otherwise crashes on the first fetch.
        log.error("aiokafka cannot decompress lz4: install cramjam (pip install cramjam)")
        return False
    return True


class _Worker(faust.Worker):
    """A worker whose shutdown cannot hang: past a deadline the process just exits."""

    async def stop(self) -> None:
        timer = threading.Timer(HARD_STOP_AFTER_S, lambda: os._exit(1))
        timer.daemon = True
        timer.start()
        await super().stop()


def run_worker(app: faust.App, log_level: str) -> int:
    """Run until SIGTERM/SIGINT (Faust installs the handlers); return the exit code."""
    worker = _Worker(
        app, loglevel=log_level, quiet=True, redirect_stdouts=False, override_logging=False
    )
    # Logs are structured lines on stderr; a terminal spinner would only garble them.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    return 0
