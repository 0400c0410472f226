"""
A real browser (Debian's headless chromium, driven by chromedriver) loads a
page through the proxy over HTTP/2 and opens a WebSocket from it: with our
SETTINGS_ENABLE_CONNECT_PROTOCOL it opens it as a stream of the page's
connection (RFC 8441), which reaches the echo node as an HTTP/1.1 Upgrade.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from twisted.internet import threads
from twisted.web.resource import Resource
from twisted.web.server import Site

from modcluster.proxy.h2 import H2Protocol

from tests.integration.test_console_browser import ChromeDriver
from tests.integration.test_proxy_h2_websocket import _ws_node, ws_test
from tests.integration.test_proxy_http2 import pki  # noqa: F401 - a fixture

pytestmark = pytest.mark.browser

PAGE = b"""<!doctype html><title>ws</title><script>
window.result = null;
const ws = new WebSocket("wss://" + location.host + "/app/chat");
ws.onopen = () => ws.send("hello over h2");
ws.onmessage = (e) => { window.result = e.data; ws.close(); };
ws.onerror = () => { window.result = "error"; };
</script>"""


class Page(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE


def _browse(url: str) -> object:
    with tempfile.TemporaryDirectory() as profile:
        driver = ChromeDriver(Path(profile))
        try:
            driver.get(url)
            deadline = time.monotonic() + 20
            result = None
            while result is None and time.monotonic() < deadline:
                result = driver.execute("return window.result;")
                time.sleep(0.1)
            return result
        finally:
            driver.close()


@ws_test
async def test_chromium_opens_the_websocket_on_the_pages_h2_connection(stack, port, cafile):
    node = _ws_node(stack)
    site = Site(Page())
    site.port = stack.reactor.listenTCP(0, site, interface="127.0.0.1")
    stack.servers.append(site)
    stack.register("page", site.port.getHost().port, contexts=("/page",))
    tunnels = []
    connect = H2Protocol._connect

    def recording(self, ex, *args):
        tunnels.append(ex)
        return connect(self, ex, *args)

    H2Protocol._connect = recording  # type: ignore[method-assign]
    try:
        import tests.integration.test_console_browser as browser

        args = browser.CHROMIUM_ARGS
        browser.CHROMIUM_ARGS = args + ["--ignore-certificate-errors"]
        try:
            result = await threads.deferToThread(
                _browse, f"https://localhost:{port}/page/index.html")
        finally:
            browser.CHROMIUM_ARGS = args
    finally:
        H2Protocol._connect = connect  # type: ignore[method-assign]
    assert result == "hello over h2"
    assert len(tunnels) == 1  # an extended CONNECT stream, not an HTTP/1.1 Upgrade
    assert node.conns[0].request.startswith(b"GET /app/chat HTTP/1.1\r\n")
