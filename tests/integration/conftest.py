"""Fixtures for integration tests against real Tomcat 10 nodes (tests/support/tomcat.py).

* ``tomcat_factory`` (session): starts :class:`TomcatInstance` objects on demand and stops
  every one at session end.  ``tomcat_factory.start(...)`` gives a fresh private node
  (use it when a test kills or reconfigures the node); ``tomcat_factory.shared(key, ...)``
  gives a node shared by every test asking for the same key and settings (restarted if a
  previous test left it dead).
* ``tomcat_node`` (function): the shared node ``"node1"`` (jvmRoute ``node1``, AJP secret
  :data:`AJP_SECRET`, packetSize 8192), alive at the start of each test.  Do not kill or
  reconfigure it; use ``tomcat_factory.start()`` for that.

Tests using these fixtures carry ``@pytest.mark.tomcat``.  When Tomcat is not installed
they fail (not skip) with a hint to run ``scripts/install-test-deps``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # make `tests.support` importable under any runner
    sys.path.insert(0, str(_REPO))

from tests.support.tomcat import TomcatInstance, tomcat_installed  # noqa: E402

#: AJP secret of the shared ``tomcat_node``.
AJP_SECRET = "txmc-test-secret"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tomcat: needs a real Tomcat 10 (Debian tomcat10), installed by scripts/install-test-deps",
    )


class TomcatFactory:
    """Starts Tomcat nodes under one temporary directory and stops them all at the end."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._instances: list[TomcatInstance] = []
        self._shared: dict[object, TomcatInstance] = {}

    @property
    def instances(self) -> list[TomcatInstance]:
        return list(self._instances)

    def create(self, name: str = "node", **kwargs: object) -> TomcatInstance:
        """A built but not started instance (``kwargs`` as for TomcatInstance)."""
        _require_tomcat()
        inst = TomcatInstance(self._tmp.mktemp(f"tomcat-{name}"), **kwargs)  # type: ignore[arg-type]
        self._instances.append(inst)
        return inst

    def start(self, name: str = "node", *, timeout: float = 60.0, **kwargs: object) -> TomcatInstance:
        """A new started instance, private to the caller."""
        inst = self.create(name, **kwargs)
        inst.start(timeout=timeout)
        return inst

    def shared(self, key: str = "node1", **kwargs: object) -> TomcatInstance:
        """The started instance for (key, kwargs), created on first use."""
        ident = (key, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        inst = self._shared.get(ident)
        if inst is None:
            kwargs.setdefault("jvm_route", key)
            inst = self.start(key, **kwargs)
            self._shared[ident] = inst
        elif not inst.running:
            inst.start()
        return inst

    def stop_all(self) -> None:
        errors = []
        for inst in reversed(self._instances):
            try:
                inst.stop()
            except Exception as e:  # noqa: BLE001 - stop the others anyway
                errors.append(e)
        self._instances.clear()
        self._shared.clear()
        if errors:
            raise errors[0]


def _require_tomcat() -> None:
    if not tomcat_installed():
        pytest.fail(
            "Tomcat 10 (Debian tomcat10) or java is not installed: run scripts/install-test-deps",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def tomcat_factory(tmp_path_factory: pytest.TempPathFactory):
    factory = TomcatFactory(tmp_path_factory)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def tomcat_node(tomcat_factory: TomcatFactory) -> TomcatInstance:
    return tomcat_factory.shared("node1", jvm_route="node1", ajp_secret=AJP_SECRET)
