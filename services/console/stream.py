"""Fan-out of feed events to every open page (server-sent events).

The feed threads publish; each page's stream handler reads its own bounded queue on
the event loop. A page that cannot keep up is disconnected rather than allowed to
hold memory: its EventSource reconnects and reloads the current state.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

Event = tuple[str, dict[str, Any]] | None  # None: the stream is over


def sse(kind: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {kind}\ndata: {payload}\n\n".encode()


class Hub:
    def __init__(self, queue_size: int = 1000) -> None:
        self._queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._lock = threading.Lock()
        self.published = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        with self._lock:
            self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        with self._lock:
            self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Thread-safe; a no-op until the event loop is attached."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self.published += 1
        try:
            loop.call_soon_threadsafe(self._deliver, (kind, data))
        except RuntimeError:  # the loop closed meanwhile
            return

    def close(self) -> None:
        """Ends every stream (on the loop's thread)."""
        with self._lock:
            queues = list(self._subscribers)
            self._subscribers.clear()
        for queue in queues:
            _end(queue)

    def _deliver(self, event: Event) -> None:
        with self._lock:
            queues = list(self._subscribers)
        for queue in queues:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.unsubscribe(queue)
                _end(queue)


def _end(queue: asyncio.Queue[Event]) -> None:
    while True:
        try:
            queue.put_nowait(None)
            return
        except asyncio.QueueFull:
            queue.get_nowait()
