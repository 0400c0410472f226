"""
modcluster.health on real loopback sockets: CPING/CPONG for AJP nodes,
OPTIONS * for HTTP nodes, and the hung or absent nodes that must answer False
within the node's ping timeout instead of hanging the STATUS that waits for them.
"""

import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from modcluster.ajp.packets import CPING_PACKET, CPONG_PACKET
from modcluster.cluster.model import NodeEntry, NodeRuntime, NodeSettings
from modcluster.config import ProxyConfig
from modcluster.health import NodeProber
from tests.support.tomcat import free_loopback_port


class Answer(Protocol):
    """Answers CPING with CPONG (or OPTIONS with a status line); 'hang' never answers."""

    def __init__(self, mode):
        self.mode = mode

    def dataReceived(self, data):
        if self.mode == "cpong" and data == CPING_PACKET:
            self.transport.write(CPONG_PACKET)
        elif self.mode == "http" and data.startswith(b"OPTIONS * HTTP/1.0\r\n"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        elif self.mode == "garbage":
            self.transport.write(b"\x41\x42\x00\x01\x05")  # END_RESPONSE, not CPONG


def listen(mode):
    return reactor.listenTCP(0, Factory.forProtocol(lambda: Answer(mode)),
                             interface="127.0.0.1")


def node(port, type="ajp", ping=0.5):
    return NodeEntry(1, NodeSettings(route="n1", host="127.0.0.1", port=port, type=type,
                                     ping=ping), NodeRuntime())


@pytest_twisted.inlineCallbacks
def test_probes_answer_true_false_and_none():
    prober = NodeProber(reactor, ProxyConfig())
    ports = {mode: listen(mode) for mode in ("cpong", "http", "hang", "garbage")}
    try:
        assert (yield prober.probe(node(ports["cpong"].getHost().port))) is True
        assert (yield prober.probe(node(ports["http"].getHost().port, "http"))) is True
        assert (yield prober.probe(node(ports["garbage"].getHost().port))) is False
        started = time.monotonic()
        assert (yield prober.probe(node(ports["hang"].getHost().port))) is False
        assert (yield prober.probe(node(ports["hang"].getHost().port, "http"))) is False
        assert time.monotonic() - started < 3  # two 0.5 s ping timeouts, not a hang
        assert (yield prober.probe(node(free_loopback_port()))) is False  # refused
        assert (yield prober.probe(node(1, "gopher"))) is False
        no_options = NodeProber(reactor, ProxyConfig(enable_options=False))
        assert (yield no_options.probe(node(free_loopback_port(), "http"))) is None
    finally:
        for p in ports.values():
            yield p.stopListening()
