"""
The package as an operator installs it: the wheel built from this checkout,
installed with pip's normal (non-editable) install into a fresh virtualenv
outside the checkout, run from a directory outside the checkout.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modcluster._version import __version__
from tests.support.tomcat import free_loopback_ports

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    """The environment without anything pointing into the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO)))
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """C{(bin directory, work directory)} of a fresh venv holding the built wheel."""
    base = tmp_path_factory.mktemp("wheel-install")
    wheels = base / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(wheels), str(REPO)],
                   check=True, cwd=base, env=_env(), timeout=300)
    (wheel,) = wheels.glob("txmodcluster-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, cwd=base, env=_env(), timeout=600)
    work = base / "run"
    work.mkdir()
    return venv / "bin", work


def _twistd(installed, *args, timeout=60):
    bindir, work = installed
    return subprocess.run([str(bindir / "twistd"), *args], cwd=work, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_wheel_contains_the_plugins_and_not_the_checkout(installed):
    """The installed package is the wheel's copy, and it carries twisted/plugins."""
    bindir, work = installed
    out = subprocess.run(
        [str(bindir / "python"), "-c",
         "import modcluster, twisted.plugins.modcluster_plugin as p; "
         "print(modcluster.__file__); print(p.__file__)"],
        cwd=work, env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert "site-packages" in line and not line.startswith(str(REPO)), line


def test_version_names_txmodcluster(installed):
    for plugin in ("modcluster", "modcluster-node"):
        out = _twistd(installed, plugin, "--version")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"txmodcluster {__version__} "), out.stdout


def test_check_and_one_request_through_a_demo_node(installed, tmp_path):
    bindir, work = installed
    out = _twistd(installed, "modcluster", "--check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "configuration OK" in out.stdout

    mport, pport = free_loopback_ports(2)
    config = tmp_path / "balancer.toml"
    config.write_text(f'[manager]\nlisten = ["tcp:{mport}:interface=127.0.0.1"]\n'
                      f'[proxy]\nlisten = ["tcp:{pport}:interface=127.0.0.1"]\n'
                      "[console]\nlisten = []\n")
    out = _twistd(installed, "modcluster", "--config", str(config), "--check")
    assert out.returncode == 0, out.stdout + out.stderr
    proc = subprocess.Popen(
        [str(bindir / "twistd"), "-n", "--pidfile=", "modcluster", "--demo",
         "--config", str(config)],
        cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        status = _get_until_200(pport, "/demo/", proc)
        assert status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_node_plugin_registers_a_backend(installed, tmp_path):
    """C{twistd modcluster-node} from the wheel registers a backend that then serves."""
    bindir, work = installed
    mport, pport, bport = free_loopback_ports(3)
    config = tmp_path / "balancer.toml"
    config.write_text(f'[manager]\nlisten = ["tcp:{mport}:interface=127.0.0.1"]\n'
                      f'[proxy]\nlisten = ["tcp:{pport}:interface=127.0.0.1"]\n'
                      "[console]\nlisten = []\n")
    (work / "app").mkdir(exist_ok=True)
    (work / "app" / "index.html").write_text("hello from the wheel\n")
    procs = [
        subprocess.Popen([str(bindir / "python"), "-m", "http.server", str(bport),
                          "--bind", "127.0.0.1"], cwd=work, env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([str(bindir / "twistd"), "-n", "--pidfile=", "modcluster",
                          "--config", str(config)], cwd=work, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
    ]
    try:
        procs.append(subprocess.Popen(
            [str(bindir / "twistd"), "-n", "--pidfile=", "modcluster-node",
             "--route", "wheel1", "--backend", f"http://127.0.0.1:{bport}",
             "--proxy", f"127.0.0.1:{mport}", "--context", "/app", "--status-period", "1"],
            cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        assert _get_until_200(pport, "/app/", procs[1]) == 200
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _get_until_200(port: int, path: str, proc, timeout: float = 30.0) -> int:
    """GET C{path} on the proxy until it answers 200 (nodes register within seconds)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited: {proc.stdout.read().decode()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path, headers={"Host": "localhost"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            last = resp.status
            if last == 200:
                return last
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"no 200 from {path} in {timeout} s (last: {last})")
