"""
The console as a browser meets it when the balancer is assembled by tap.build:
on its own listener (the MCMP port 6666 is one Chromium refuses to open), and
protected against DNS rebinding (a name that resolves to 127.0.0.1 but is not one
the console answers to gets 421).  Headless Chromium through chromedriver, as in
test_console_browser.py; everything on 127.0.0.1 (Chromium never connects to
6666: it refuses the port before connecting).
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.integration import test_console_browser as browser
from tests.support.tomcat import free_loopback_ports

pytestmark = pytest.mark.browser


def drive(cport: int, profile) -> dict:
    driver = browser.ChromeDriver(profile)
    try:
        out = {}
        driver.get(f"http://localhost:{cport}/mod_cluster-manager")
        out["console"] = driver.text(driver.find("body"))
        driver.get(f"http://rebind.test:{cport}/api/v1/")
        out["rebound"] = driver.text(driver.find("body"))
        try:
            driver.get("http://127.0.0.1:6666/mod_cluster-manager")
            out["unsafe"] = driver.text(driver.find("body"))
        except browser.WebDriverError as e:
            out["unsafe"] = str(e)
        return out
    finally:
        driver.close()


@pytest_twisted.ensureDeferred
async def test_console_opens_on_its_listener_and_refuses_rebound_names(tmp_path, monkeypatch):
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    from modcluster.config import parse_config
    from modcluster.tap import build

    # rebind.test resolves to 127.0.0.1 in this browser: what a rebinding attack does.
    monkeypatch.setattr(browser, "CHROMIUM_ARGS", browser.CHROMIUM_ARGS + [
        "--host-resolver-rules=MAP rebind.test 127.0.0.1"])
    mport, pport, cport = free_loopback_ports(3)
    service = build(parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[console]
listen = ["tcp:{cport}:interface=127.0.0.1"]
[proxy]
listen = ["tcp:{pport}:interface=127.0.0.1"]
"""), reactor)
    service.startService()
    try:
        result = await deferToThread(drive, cport, tmp_path / "profile")
    finally:
        await service.stopService()
    assert "mod_cluster/" in result["console"]
    assert "Misdirected" in result["rebound"] and "release" not in result["rebound"]
    assert "ERR_UNSAFE_PORT" in result["unsafe"]
