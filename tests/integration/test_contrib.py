"""
What the repository ships for operators: the systemd units in contrib/ (checked
with `systemd-analyze verify` where it exists) and `./dev run` passing twistd's
own options to twistd.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
UNITS = ["txmodcluster.service", "txmodcluster@.service"]


def _unit_text(name: str, config: Path) -> str:
    text = (ROOT / "contrib" / name).read_text()
    assert "/opt/txmodcluster/bin/twistd" in text
    return (text.replace("/opt/txmodcluster/bin/twistd", TWISTD)
            .replace("/etc/txmodcluster/txmodcluster.toml", str(config)))


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_verifies(tmp_path, name):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    config = tmp_path / "txmodcluster.toml"
    config.write_text("")
    unit = tmp_path / name.replace("@.", "@a.")
    unit.write_text(_unit_text(name, config))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    ours = [line for line in (out.stdout + out.stderr).splitlines() if unit.name in line]
    assert ours == []


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_commands_run(tmp_path, name):
    """The unit's ExecStartPre (--check) passes, and ExecStart's options are twistd's."""
    config = tmp_path / "txmodcluster.toml"
    config.write_text("[manager]\nbalancer_name = 'prod'\n")
    lines = dict(line.split("=", 1) for line in _unit_text(name, config).splitlines()
                 if line.startswith(("ExecStartPre=", "ExecStart=")))
    out = subprocess.run(shlex.split(lines["ExecStartPre"]), capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0 and "configuration OK" in out.stdout, out.stderr
    start = shlex.split(lines["ExecStart"])
    # the same command with --check appended: twistd accepts its options, the plugin its own
    out = subprocess.run(start + ["--check"], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 0 and "configuration OK" in out.stdout, out.stderr


def test_dev_run_puts_twistd_options_before_the_plugin():
    out = subprocess.run(
        [str(ROOT / "dev"), "run", "--pidfile=", "--config", "x.toml", "-l", "my.log",
         "--logfile=other.log", "--nodaemon"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "DEV_PRINT_ONLY": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        ".venv/bin/twistd", "-n", "--pidfile=", "-l", "my.log", "--logfile=other.log",
        "--nodaemon", "modcluster", "--demo", "--config", "x.toml"]
