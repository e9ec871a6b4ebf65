"""The page in headless Chromium against the console over the real stack.

Needs the system Chromium (Debian: ``apt-get install chromium``) and the Playwright
client from PyPI, which drives it; no browser is downloaded (``SENTIFLOW_CHROMIUM``
names another executable). In CI a missing browser
fails these tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sentiflow_client.v1 import events_pb2

from sentiflow.readback import read_topic
from tests.support.console import ConsoleEnv, key, prediction, timestamp
from tests.support.feedback import wait_for
from tests.support.paths import REPO_ROOT

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.integration

ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The bar: a scored document is on the page within 2 s.
STREAM_BAR_S = 2.0


def _chromium() -> str:
    path = os.environ.get("SENTIFLOW_CHROMIUM") or shutil.which("chromium") or ""
    missing = []
    if not path or not Path(path).exists():
        missing.append("the chromium executable (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        reason = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def _logged_in(context: BrowserContext, env: ConsoleEnv, errors: list[str]) -> Page:
    """A page past the login form, live; script errors and CSP refusals go to ``errors``
    (the 401 that shows the login form is expected, so listening starts after it)."""
    page = context.new_page()
    page.goto(env.url)
    if page.locator("#login").is_visible():
        page.fill("#login-key", key("alice"))
        page.click("#login-form button[type=submit]")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    page.wait_for_selector("#live.on", timeout=15_000)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return page


def test_login_form_guards_the_page(browser: BrowserContext, console_env: ConsoleEnv) -> None:
    page = browser.new_page()
    try:
        page.goto(console_env.url)
        page.wait_for_selector("#login-form", state="visible", timeout=15_000)
        page.fill("#login-key", "not-a-key")
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#login-error:has-text('unknown API key')", timeout=10_000)
        assert page.locator("#app").is_hidden()
    finally:
        page.close()


def test_live_stream_and_a_correction_that_settles(
    browser: BrowserContext, console_env: ConsoleEnv
) -> None:
    errors: list[str] = []
    page = _logged_in(browser, console_env, errors)
    try:
        latencies, after_ack = [], []
        docs = [prediction(f"live-{uuid.uuid4().hex[:8]}", "positive") for _ in range(5)]
        for p in docs:
            selector = f'#stream-rows tr[data-doc-id="{p.document.id}"]'
            started = time.monotonic()
            console_env.score(p, stored=False)  # a new producer, returns once acknowledged
            acked = time.monotonic()
            page.wait_for_selector(selector, timeout=30_000)
            latencies.append(time.monotonic() - started)
            after_ack.append(time.monotonic() - acked)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "console-stream-latency.json").write_text(
            json.dumps(
                {
                    "produced_to_visible_s": [round(x, 3) for x in latencies],
                    "median_s": round(statistics.median(latencies), 3),
                    "max_s": round(max(latencies), 3),
                    "acknowledged_to_visible_s": [round(x, 3) for x in after_ack],
                },
                indent=2,
            )
        )
        print(f"produced -> visible on the page: {[round(x, 3) for x in latencies]} s")
        # The median of five, so that one scheduling hiccup on a loaded CI machine does
        # not fail the bar; every one is recorded in the artefact above.
        assert statistics.median(latencies) <= STREAM_BAR_S

        target = docs[-1]
        doc_id = target.document.id
        row = page.locator(f'#stream-rows tr[data-doc-id="{doc_id}"]')
        assert row.locator(".label").inner_text() == "positive"
        console_env.wait_stored([doc_id])
        row.locator("button[data-action=correct][data-label=negative]").click()
        topic = console_env.topic(console_env.settings.topics.feedback_events)

        def recorded() -> events_pb2.Feedback | None:
            for msg in read_topic(console_env.kafka, topic):
                event = events_pb2.Feedback()
                event.ParseFromString(msg.value() or b"")
                if event.doc_id == doc_id:
                    return event
            return None

        event = wait_for(recorded, "the Feedback event from the click")
        assert (event.label, event.kind, event.user) == (
            "negative",
            events_pb2.FEEDBACK_KIND_CORRECT,
            "alice",
        )
        settled = row.locator(".settle.settled")
        settled.wait_for(timeout=30_000)
        assert settled.inner_text() == "settled: negative"
        page.screenshot(path=str(ARTIFACTS / "console-stream.png"))
        assert errors == []
    finally:
        page.close()


def test_entity_chart_renders_with_alerts(browser: BrowserContext, console_env: ConsoleEnv) -> None:
    entity = f"CHART{uuid.uuid4().hex[:4].upper()}"
    now = time.time()
    start = now - now % 60
    # Twelve windows of a quiet entity, then a negative spike the alert points at.
    records = []
    for w in range(12):
        spike = w >= 10
        for i in range(4 + (w * 7) % 5 + (6 if spike else 0)):
            label = (
                ("negative" if i % 3 else "neutral")
                if spike
                else ("positive", "neutral", "negative", "positive")[i % 4]
            )
            at = start - (11 - w) * 60 + 1 + i
            records.append(
                prediction(f"chart-{uuid.uuid4().hex[:8]}", label, entities=(entity,), at=at)
            )
    console_env.score(*records, stored=False)
    alert = events_pb2.Alert(
        alert_id=f"alert-{uuid.uuid4().hex[:8]}",
        entity=entity,
        kind=events_pb2.ALERT_KIND_RAISED,
        window_start=timestamp(start - 60),
        window_end=timestamp(start + 60),
        negative_share=0.7,
        baseline_share=0.25,
        z=4.8,
        volume=20,
        negative_count=14,
        severity=events_pb2.SEVERITY_HIGH,
        examples=[events_pb2.AlertExample(doc_id=records[-1].document.id, text="guidance cut")],
        raised_at=timestamp(now),
    )
    console_env.produce(
        console_env.topic(console_env.settings.topics.alerts_sentiment), [alert], [entity]
    )
    errors: list[str] = []
    page = _logged_in(browser, console_env, errors)
    try:
        page.click("#tabs button[data-tab=alerts]")
        page.wait_for_selector(f'#alert-list li[data-alert-id="{alert.alert_id}"]', timeout=15_000)
        page.click("#tabs button[data-tab=entities]")
        link = page.locator(f'#entity-list li[data-entity="{entity}"] a')
        link.wait_for(timeout=15_000)
        link.click()
        page.wait_for_selector("#entity-chart path.alert-mark", timeout=15_000)
        page.wait_for_function(
            "n => document.querySelectorAll('#entity-chart rect.bar').length >= n",
            arg=12,
            timeout=15_000,
        )
        bars = page.locator("#entity-chart rect.bar")
        assert bars.count() >= 12
        assert page.locator("#entity-chart rect.bar.negative").count() >= 2
        assert page.locator("#entity-chart rect.alert-band").count() == 1
        assert page.locator("#chart-title").inner_text() == entity
        assert page.locator(f'#chart-alerts li[data-alert-id="{alert.alert_id}"]').count() == 1
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "console-entity-chart.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert errors == []
    finally:
        page.close()
