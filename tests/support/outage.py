"""A Redis of one test's own that the test can take down and bring back on the same port.

The session's Redis is shared by every test, so an outage test starts its own. Data
is synced on every write, so what Redis acknowledged before a crash is there after.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import urllib.error
import urllib.request
from contextlib import suppress
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


class ReplyCutter:
    """A TCP proxy in front of a Redis that can lose one reply on purpose.

    Armed with :meth:`cut_next_reply_to`, it lets the next request that contains a
    given command through to Redis, which runs it, and then closes that connection
    instead of passing the reply on: what a client sees when Redis crashes or the
    network resets right after a write was made durable. Every other byte is relayed
    unchanged, so clients reconnect and carry on.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self._target = (host, target_port)
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: bytes | None = None
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="reply-cutter", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut_next_reply_to(self, command: bytes) -> None:
        with self._lock:
            self._armed = command

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            marked = threading.Event()  # this connection's next reply is to be lost
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(
                target=self._pump, args=(client, server, marked, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, marked, False), daemon=True
            ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, marked: threading.Event, request: bool
    ) -> None:
        try:
            while data := src.recv(65536):
                if request:
                    with self._lock:
                        if self._armed is not None and self._armed in data:
                            self._armed = None
                            marked.set()
                elif marked.is_set():
                    with self._lock:
                        self.cuts += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> ReplyCutter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
