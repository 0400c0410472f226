"""
The console in a real headless browser (Debian's chromium + chromium-driver),
driven over the W3C WebDriver protocol with a small urllib client (no selenium).

The console is served by a real twisted.web Site on 127.0.0.1 from the
pytest-twisted reactor; the blocking WebDriver conversation runs in a thread
(C{deferToThread}) so the reactor keeps serving the browser meanwhile.  The test
clicks the button that disables a context, checks the page, the registry and the
MCMP INFO output, and saves a screenshot to C{test-artifacts/console.png}.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import pytest
import pytest_twisted

from modcluster.cluster.model import BalancerSettings, ContextState, NodeSettings
from modcluster.cluster.registry import Registry
from modcluster.config import ConsoleConfig
from modcluster.console.resources import ConsoleResource, mount
from modcluster.mcmp.handler import MCMPHandler

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1500",
]
TIMEOUT = 30.0  # seconds for any single WebDriver call / start-up step

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("chromium and chromedriver are not installed "
                "(apt-get install -y chromium chromium-driver)", allow_module_level=True)


class WebDriverError(Exception):
    pass


class ChromeDriver:
    """A chromedriver process on a loopback port, and a minimal W3C WebDriver client."""

    def __init__(self, profile: Path) -> None:
        self._proc = subprocess.Popen(
            [CHROMEDRIVER, "--port=0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.base = f"http://127.0.0.1:{self._wait_for_port()}"
        self._wait_ready()
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM,
                                   "args": CHROMIUM_ARGS + [f"--user-data-dir={profile}"]},
        }}}
        self.session = self._call("POST", "/session", caps)["sessionId"]
        self._call("POST", f"/session/{self.session}/timeouts",
                   {"implicit": 5000, "pageLoad": int(TIMEOUT * 1000)})

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + TIMEOUT
        out = self._proc.stdout
        seen = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([out], [], [], deadline - time.monotonic())
            if not ready:
                break
            line = out.readline()
            if not line:
                break
            seen += line
            m = re.search(r"started successfully on port (\d+)", line)
            if m:
                return int(m.group(1))
        self.close()
        raise WebDriverError(f"chromedriver did not start: {seen!r}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                if self._call("GET", "/status").get("ready"):
                    return
            except (OSError, WebDriverError):
                pass
            time.sleep(0.1)
        raise WebDriverError("chromedriver never became ready")

    def _call(self, method: str, path: str, payload: Optional[dict] = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as e:
            raise WebDriverError(f"{method} {path}: {e.code} {e.read()[:500]!r}") from None
        return body.get("value")

    # -- commands -------------------------------------------------------------

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def get(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def current_url(self) -> str:
        return self._call("GET", self._s("/url"))

    def find(self, css: str) -> str:
        found = self._call("POST", self._s("/element"), {"using": "css selector", "value": css})
        return next(iter(found.values()))

    def find_all(self, css: str) -> list[str]:
        found = self._call("POST", self._s("/elements"), {"using": "css selector", "value": css})
        return [next(iter(e.values())) for e in found]

    def click(self, element: str) -> None:
        self._call("POST", self._s(f"/element/{element}/click"), {})

    def text(self, element: str) -> str:
        return self._call("GET", self._s(f"/element/{element}/text"))

    def screenshot(self, path: Path) -> None:
        png = base64.b64decode(self._call("GET", self._s("/screenshot")))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)

    def close(self) -> None:
        try:
            if getattr(self, "session", None):
                self._call("DELETE", f"/session/{self.session}")
        except Exception:  # noqa: BLE001 - the process is stopped anyway
            pass
        finally:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            if self._proc.stdout is not None:
                self._proc.stdout.close()


def two_nodes(clock) -> Registry:
    reg = Registry(clock)
    bal = BalancerSettings("mycluster")
    reg.config(bal, NodeSettings(route="node1", host="127.0.0.1", port=8009),
               [(["localhost", "default-host"], ["/app", "/"])])
    reg.app("ENABLE-APP", "node1", ["localhost"], ["/app", "/"])
    assert reg.apply_status("node1", 85, True)
    reg.config(bal, NodeSettings(route="node2", host="127.0.0.1", port=8080, type="http",
                                 domain="dc1"), [(["localhost"], ["/app"])])
    reg.app("ENABLE-APP", "node2", ["localhost"], ["/app"])
    assert reg.apply_status("node2", 50, True)
    return reg


APP_ROW = ('#node-1 tr.ctx:has(input[name="Context"][value="/app"])')


def drive(url: str, profile: Path) -> dict:
    """The browser side (runs in a thread)."""
    driver = ChromeDriver(profile)
    try:
        driver.get(url)
        badge = driver.find(APP_ROW + " .badge")
        before = driver.text(badge)
        driver.click(driver.find(APP_ROW + ' button[value="DISABLE-APP"]'))
        # After the POST the browser follows the 303 back to the page; wait for
        # the row to show the new state (implicit wait covers the reload).
        driver.find("#node-1 tr.status-disabled")
        after = driver.text(driver.find(APP_ROW + " .badge"))
        buttons = [driver.text(b) for b in driver.find_all(APP_ROW + " button")]
        other = driver.text(driver.find(
            '#node-2 tr.ctx:has(input[name="Context"][value="/app"]) .badge'))
        landed = driver.current_url()
        driver.screenshot(ARTIFACTS / "console.png")
        driver.click(driver.find('a[href*="Cmd=INFO"]'))
        info = driver.text(driver.find("body"))
        return {"before": before, "after": after, "buttons": buttons, "other": other,
                "url": landed, "info": info}
    finally:
        driver.close()


@pytest_twisted.ensureDeferred
async def test_disable_a_context_from_the_browser(tmp_path):
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread
    from twisted.web.pages import notFound
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Root(Resource):
        def getChild(self, path, request):
            return notFound()  # e.g. the browser's /favicon.ico

    registry = two_nodes(reactor)
    handler = MCMPHandler(registry, None, reactor)
    console = ConsoleResource(registry, ConsoleConfig(), "mod_cluster/1.3.22.Final",
                              clock=reactor, mcmp=handler)
    root = Root()
    mount(root, "/mod_cluster-manager", console)
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/mod_cluster-manager"
        result = await deferToThread(drive, url, tmp_path / "profile")
    finally:
        await port.stopListening()

    assert result["before"] == "ENABLED"
    assert result["after"] == "DISABLED"
    assert result["buttons"] == ["Enable", "Stop"]
    assert result["other"] == "ENABLED"
    assert result["url"].endswith("/mod_cluster-manager#node-1")
    # The registry and the MCMP INFO the node reads agree.
    assert registry.find_context("node1", "localhost", "/app").state is ContextState.DISABLED
    assert registry.find_context("node2", "localhost", "/app").state is ContextState.ENABLED
    assert "Context: /app, Status: DISABLED" in handler.info().decode()
    assert "Context: [1:1:1], Context: /app, Status: DISABLED" in result["info"]
    assert (ARTIFACTS / "console.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(ARTIFACTS / "console.png") > 10_000
