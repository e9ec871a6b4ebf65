"""Fan-out of feed events to open pages."""

from __future__ import annotations

import asyncio
import threading

from services.console.stream import Event, Hub, sse


def test_sse_frames_are_one_event_with_json_data() -> None:
    assert sse("document", {"id": "d1", "text": "é"}) == (
        'event: document\ndata: {"id":"d1","text":"é"}\n\n'.encode()
    )


def test_events_from_threads_reach_every_subscriber_and_close_ends_streams() -> None:
    async def scenario() -> list[Event]:
        hub = Hub()
        hub.publish("document", {"id": "early"})  # before attach: dropped
        hub.attach(asyncio.get_running_loop())
        first, second = hub.subscribe(), hub.subscribe()
        thread = threading.Thread(target=hub.publish, args=("alert", {"id": "a1"}))
        thread.start()
        thread.join()
        got: list[Event] = [await asyncio.wait_for(q.get(), 5) for q in (first, second)]
        hub.close()
        got.append(await asyncio.wait_for(first.get(), 5))
        assert hub.subscribers == 0
        return got

    assert asyncio.run(scenario()) == [("alert", {"id": "a1"}), ("alert", {"id": "a1"}), None]


def test_a_subscriber_that_falls_behind_is_disconnected() -> None:
    async def scenario() -> tuple[int, list[Event]]:
        hub = Hub(queue_size=2)
        hub.attach(asyncio.get_running_loop())
        slow = hub.subscribe()
        for i in range(3):
            hub.publish("document", {"i": i})
        await asyncio.sleep(0.05)
        drained: list[Event] = []
        while not slow.empty():
            drained.append(slow.get_nowait())
        return hub.subscribers, drained

    subscribers, drained = asyncio.run(scenario())
    assert subscribers == 0
    assert drained[-1] is None
