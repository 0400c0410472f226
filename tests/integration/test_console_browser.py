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

    def send_keys(self, element: str, text: str) -> None:
        self._call("POST", self._s(f"/element/{element}/value"), {"text": text})

    def execute(self, script: str, *args) -> Any:
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

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


# -- 1 000 nodes (issue 20) -----------------------------------------------------------


def thousand_nodes(clock) -> Registry:
    """1 000 nodes x 10 contexts in four domains; a few in error, one draining."""
    from modcluster.cluster.registry import Limits

    reg = Registry(clock, Limits(max_contexts=20_000))
    bal = BalancerSettings("mycluster")
    for i in range(1000):
        route = f"node{i:04d}"
        paths = [f"/app{j}" for j in range(10)]
        reg.config(bal, NodeSettings(route=route, host=f"127.0.{i // 250}.{i % 250 + 1}",
                                     port=8009, domain=f"dc{i % 4}"),
                   [([f"www{i}.example.com", "localhost"], paths)])
        reg.app("ENABLE-APP", route, ["localhost"], paths)
        assert reg.apply_status(route, 50 + i % 40, True)
    for i in (13, 250, 777):
        reg.set_error(f"node{i:04d}", "probe at STATUS failed")
    reg.app("DISABLE-APP", "node0042", ["localhost"], ["/app3"])
    return reg


def drive_thousand(url: str, profile: Path, bump) -> dict:
    """Browse the 1 000-node console: first page, filter, detail, live update."""
    driver = ChromeDriver(profile)
    out: dict = {}
    try:
        driver.get(url)
        out["rows"] = len(driver.find_all("tr.node-row"))
        out["ok_tile"] = driver.text(driver.find('[data-count="ok"]'))
        out["error_tile"] = driver.text(driver.find('[data-count="in_error"]'))
        out["attention"] = driver.text(driver.find(".attention-list"))
        out["result"] = driver.text(driver.find(".finder .result"))
        driver.screenshot(ARTIFACTS / "console-1000.png")
        # Filter by context path + route fragment: type, pick the field, submit.
        box = driver.find('input[name="q"]')
        driver.send_keys(box, "node077")
        driver.click(driver.find('select[name="in"] option[value="route"]'))
        driver.click(driver.find("button.apply"))
        driver.find("article.node")  # ten matches: shown as cards
        out["filtered"] = [driver.text(e) for e in driver.find_all("article.node h3 .route")]
        out["filtered_url"] = driver.current_url()
        out["filtered_in_error"] = driver.text(driver.find("article.state-in-error .reason"))
        driver.screenshot(ARTIFACTS / "console-1000-filter.png")
        # The detail of one node, from its link.
        driver.click(driver.find("article.state-in-error h3 .route"))
        driver.find(".crumbs")
        out["detail_contexts"] = len(driver.find_all("article.node tr.ctx"))
        out["detail_url"] = driver.current_url()
        # Auto refresh updates the numbers in place (no reload).
        driver.get(url + "?q=node0500&in=route&refresh=1")
        driver.execute("window.__notReloaded = true;")
        bump()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if driver.text(driver.find('article.node [data-f="elected"]')) == "4242":
                break
            time.sleep(0.3)
        out["elected"] = driver.text(driver.find('article.node [data-f="elected"]'))
        out["not_reloaded"] = driver.execute("return window.__notReloaded === true;")
        return out
    finally:
        driver.close()


@pytest_twisted.ensureDeferred
async def test_thousand_nodes_in_the_browser(tmp_path):
    from twisted.internet import reactor
    from twisted.internet.threads import blockingCallFromThread, deferToThread
    from twisted.web.pages import notFound
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Root(Resource):
        def getChild(self, path, request):
            return notFound()  # e.g. the browser's /favicon.ico

    registry = thousand_nodes(reactor)
    handler = MCMPHandler(registry, None, reactor)
    console = ConsoleResource(registry, ConsoleConfig(), "mod_cluster/1.3.22.Final",
                              clock=reactor, mcmp=handler)
    root = Root()
    mount(root, "/mod_cluster-manager", console)
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")

    def bump():
        def change():
            registry.node("node0500").rt.elected = 4242
        blockingCallFromThread(reactor, change)

    try:
        url = f"http://127.0.0.1:{port.getHost().port}/mod_cluster-manager"
        result = await deferToThread(drive_thousand, url, tmp_path / "profile", bump)
    finally:
        await port.stopListening()

    assert result["rows"] == 50
    assert result["ok_tile"] == "997" and result["error_tile"] == "3"
    assert "node0013" in result["attention"] and "node0042" in result["attention"]
    assert result["result"] == "Nodes 1–50 of 1000 of the cluster"
    # Ten matches, shown as cards in domain order (dc0: 0772, 0776, dc1: 0773, …).
    assert sorted(result["filtered"]) == [f"node077{i}" for i in range(10)]
    assert result["filtered"][:2] == ["node0772", "node0776"]
    assert "q=node077" in result["filtered_url"] and "in=route" in result["filtered_url"]
    assert result["filtered_in_error"].startswith("probe at STATUS failed")
    assert result["detail_contexts"] == 10
    assert result["detail_url"].endswith("?JVMRoute=node0777")
    assert result["elected"] == "4242" and result["not_reloaded"] is True
    for name in ("console-1000.png", "console-1000-filter.png"):
        assert (ARTIFACTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
