"""One console over the real stack for the package: the feedback service in-process,
its aggregator as a process, the console in a thread, each test on its own documents.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from services.console.main import run
from stack import devstack
from tests.support.console import ConsoleEnv, console_ready, console_settings
from tests.support.feedback import Aggregator, Service, wait_for


@pytest.fixture(scope="package")
def console_env(
    stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsoleEnv]:
    tmp = tmp_path_factory.mktemp("console")
    feedback, settings = console_settings(stack, tmp)
    service = Service(feedback).start()
    aggregator = Aggregator(feedback, tmp / "aggregator.log")
    stop = threading.Event()
    bound: list[int] = []
    thread = threading.Thread(target=run, args=(settings, stop, bound), daemon=True)
    thread.start()
    try:
        aggregator.wait_ready()
        port = wait_for(lambda: bound[0] if bound else None, "the console to listen")
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: True if console_ready(url) else None, "the console to be ready")
        yield ConsoleEnv(feedback, settings, service, aggregator, url, tmp)
    finally:
        stop.set()
        thread.join(timeout=20)
        aggregator.stop()
        service.stop()
    assert not thread.is_alive()
