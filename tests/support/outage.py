"""A Redis of one test's own that the test can take down and bring back on the same port.

The session's Redis is shared by every test, so an outage test starts its own. Data
is synced on every write, so what Redis acknowledged before a crash is there after.
"""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

from stack import devstack


class PrivateRedis:
    def __init__(self, root: Path) -> None:
        self.port = devstack.free_port()
        self._root = root
        self.server = self._start(restarting=False)

    @property
    def url(self) -> str:
        return self.server.address

    def _start(self, *, restarting: bool) -> devstack.Server:
        server = devstack.start_redis(
            "127.0.0.1",
            self.port,
            self._root / "data",
            self._root / "redis.log",
            fsync_always=True,
            restarting=restarting,
        )
        devstack.wait_until(
            devstack.redis_ready(server.address), 30, "redis", server.proc, server.log_path
        )
        return server

    def crash(self) -> None:
        """SIGKILL: clients see refused connections until :meth:`start_again`."""
        proc = self.server.proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def start_again(self) -> None:
        self.server = self._start(restarting=True)

    def stop(self) -> None:
        proc = self.server.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def readiness(port: int) -> dict[str, object]:
    """A service's ``/readyz`` answer, ready or not (a 503 carries the same body);
    ``{"ready": False}`` while nothing answers on the port yet."""
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        # Long enough for a Redis ping to exhaust its retries while Redis is down.
        with urllib.request.urlopen(url, timeout=30) as r:
            body: dict[str, object] = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    except OSError:
        body = {"ready": False}
    return body
