"""
The MCMP server end to end in memory: raw request bytes into the management
Site, raw response bytes out, checked with the Java listener's own parsing
rules (mcmp.md §7).
"""

import httptools
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.error import ConnectionDone
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from modcluster.cluster.model import ContextState
from modcluster.cluster.registry import Limits, Registry
from modcluster.mcmp.handler import MCMPHandler
from modcluster.node.javaparse import parse_info_as_java, parse_stop_app_requests
from modcluster.mcmp.resource import ManagementRoot, ManagementSite, MCMPResource
from tests.support.fixtures import load_exchanges


class Prober:
    """Answers probes with C{self.result}, or holds them when C{hold} is set."""

    def __init__(self, result=True):
        self.result = result
        self.probed = []
        self.hold = None

    def probe(self, node):
        self.probed.append((node.settings.host, node.settings.port, node.settings.type))
        if self.hold is not None:
            self.hold = Deferred()
            return self.hold
        return succeed(self.result)


class Server:
    def __init__(self, max_message_size=65536, **kw):
        self.clock = Clock()
        self.clock.advance(1_790_000_000)
        self.registry = Registry(self.clock, Limits(**kw))
        self.prober = Prober()
        self.handler = MCMPHandler(self.registry, self.prober, self.clock,
                                   max_message_size=max_message_size)
        root = ManagementRoot(MCMPResource(self.handler))
        self.site = ManagementSite(root, max_message_size=max_message_size)
        self.site._clock = self.clock
        self.connect()

    def connect(self):
        self.channel = self.site.buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def send(self, raw: bytes):
        """Send raw bytes, return the list of parsed responses received."""
        self.transport.clear()
        self.channel.dataReceived(raw)
        return parse_responses(self.transport.value())

    def request(self, method, body=b"", uri=b"/", headers=()):
        head = [method.encode() + b" " + uri + b" HTTP/1.1", b"Host: 127.0.0.1:6666"]
        if body:
            head.append(b"Content-Length: %d" % len(body))
        head += [b"User-Agent: ClusterListener/1.0", b"Connection: Keep-Alive", *headers]
        responses = self.send(b"\r\n".join(head) + b"\r\n\r\n" + body)
        assert len(responses) == 1, responses
        return responses[0]


class Response:
    def __init__(self):
        self.status_line = None
        self.headers = {}
        self.body = b""


def parse_responses(data: bytes):
    responses = []

    class P:
        def on_message_begin(self):
            responses.append(Response())

        def on_status(self, status):
            responses[-1].reason = status

        def on_header(self, name, value):
            responses[-1].headers[name.lower()] = value

        def on_body(self, body):
            responses[-1].body += body

    parser = httptools.HttpResponseParser(P())
    parser.feed_data(data)
    for r, line in zip(responses, [s for s in data.split(b"\r\n") if s.startswith(b"HTTP/1.")]):
        r.status_line = line
        r.code = int(line.split(b" ")[1])
    return responses


def java_accepts(response) -> bool:
    """The Java listener's success test: status between first and second space."""
    parts = response.status_line.split(b" ", 2)
    return len(parts) == 3 and parts[1] == b"200" and parts[2] != b""


# --- replaying a real Tomcat's MCMP traffic -------------------------------------


def on_the_wire(ex) -> bytes:
    """The request exactly as sent (the capture adds a display-only LF after bodies)."""
    head = ex.raw_request.split(b"\r\n\r\n", 1)[0]
    return head + b"\r\n\r\n" + ex.request.body


@pytest.mark.parametrize("run", ["A", "B", "C"])
def test_tomcat_trace_is_accepted(run):
    server = Server()
    exchanges = [e for e in load_exchanges("tomcat10-mcmp-trace.txt")
                 if e.label.startswith(run) and e.label[1].isdigit()]
    assert exchanges
    for ex in exchanges:
        responses = server.send(on_the_wire(ex))
        assert len(responses) == 1, ex.label
        resp = responses[0]
        method = ex.label.split()[1]
        assert java_accepts(resp), (ex.label, resp.status_line, resp.headers)
        assert b"content-length" in resp.headers
        if method == "INFO":
            parse_info_as_java(resp.body)  # must not raise
        if method == "STOP-APP" and resp.body:
            assert parse_stop_app_requests(resp.body) == 0
        if method == "STATUS":
            assert resp.body.startswith(b"Type=STATUS-RSP&JVMRoute=node1&State=OK&id=")
    if run == "A":
        # graceful shutdown removed everything: the node is marked removed
        assert server.registry.node("node1").rt.removed


def test_run_a_state_after_deploy():
    server = Server()
    exchanges = load_exchanges("tomcat10-mcmp-trace.txt")
    for ex in exchanges:
        if ex.label.startswith("A9 "):
            break
        if ex.label[0] == "A":
            server.send(on_the_wire(ex))
    server.send(on_the_wire(next(e for e in exchanges if e.label.startswith("A9 "))))
    info = parse_info_as_java(server.request("INFO").body)
    contexts = dict(info["node1"][0].contexts)
    assert contexts == {"/": "ENABLED", "/app1": "ENABLED", "/app2": "ENABLED"}
    assert server.registry.node("node1").rt.lbfactor == 100
    assert server.prober.probed[0] == ("127.0.0.1", 28009, "ajp")


# --- commands --------------------------------------------------------------------


def register(server, route="node1", port=8009, contexts=("/app",)):
    r = server.request("CONFIG", b"JVMRoute=%s&Host=127.0.0.1&Port=%d&Type=ajp"
                       % (route.encode(), port))
    assert r.code == 200 and r.body == b""
    for c in contexts:
        body = b"JVMRoute=%s&Alias=default-host%%2Clocalhost&Context=%s" % (
            route.encode(), c.replace("/", "%2F").encode())
        assert server.request("ENABLE-APP", body).code == 200


def test_info_lists_nodes_vhosts_contexts_in_order():
    server = Server()
    register(server, "node1", 8009, ("/app", "/"))
    register(server, "node2", 8010, ("/app",))
    server.request("STATUS", b"JVMRoute=node1&Load=85")
    body = server.request("INFO").body.decode()
    lines = body.splitlines()
    assert lines[0].startswith("Node: [1],Name: node1,Balancer: mycluster,LBGroup: ,"
                               "Host: 127.0.0.1,Port: 8009,Type: ajp,Flushpackets: Off,"
                               "Flushwait: 10,Ping: 10,Smax: -1,Ttl: 60,Elected: 0,Read: 0,"
                               "Transfered: 0,Connected: 0,Load: 85")
    assert lines[2:6] == ["Vhost: [1:1:1], Alias: default-host", "Vhost: [1:1:2], Alias: localhost",
                          "Vhost: [2:1:3], Alias: default-host", "Vhost: [2:1:4], Alias: localhost"]
    assert lines[6:] == ["Context: [1:1:1], Context: /app, Status: ENABLED",
                         "Context: [1:1:2], Context: /, Status: ENABLED",
                         "Context: [2:1:3], Context: /app, Status: ENABLED"]
    info = parse_info_as_java(body.encode())
    assert set(info) == {"node1", "node2"}
    xml = server.request("INFO", headers=[b"Accept: text/xml"])
    assert xml.headers[b"content-type"] == b"text/xml"
    assert xml.body.startswith(b'<?xml version="1.0" standalone="yes" ?>')


def test_stop_app_reports_requests_in_flight():
    server = Server()
    register(server)
    server.registry.find_context("node1", "localhost", "/app").rt.in_flight = 4
    r = server.request("STOP-APP", b"JVMRoute=node1&Alias=default-host%2Clocalhost&Context=%2Fapp")
    assert r.body == b"Type=STOP-APP-RSP&JvmRoute=node1&Alias=default-host&Context=/app&Requests=4\n"
    assert parse_stop_app_requests(r.body) == 4
    wildcard = server.request("STOP-APP", b"JVMRoute=node1", uri=b"/*")
    assert wildcard.code == 200 and wildcard.body == b""


def test_status_probe_failure_answers_notok_and_marks_error():
    server = Server()
    register(server)
    server.prober.result = False
    r = server.request("STATUS", b"JVMRoute=node1&Load=50")
    assert r.body.split(b"&")[2] == b"State=NOTOK"
    assert server.registry.node("node1").rt.in_error


def test_status_waits_for_the_probe():
    server = Server()
    register(server)
    server.prober.hold = True
    server.transport.clear()
    server.channel.dataReceived(
        b"STATUS / HTTP/1.1\r\nHost: x\r\nContent-Length: 22\r\n\r\nJVMRoute=node1&Load=50")
    assert server.transport.value() == b""
    server.prober.hold.callback(True)
    (resp,) = parse_responses(server.transport.value())
    assert b"State=OK" in resp.body


def test_status_probe_outliving_the_client_is_harmless():
    server = Server()
    register(server)
    server.prober.hold = True
    server.channel.dataReceived(
        b"STATUS / HTTP/1.1\r\nHost: x\r\nContent-Length: 22\r\n\r\nJVMRoute=node1&Load=50")
    server.channel.connectionLost(Failure(ConnectionDone()))
    server.prober.hold.callback(True)  # nothing to write to; must not raise
    assert server.registry.node("node1").rt.lbfactor == 50


def test_unknown_node_is_mem_with_headers_and_close():
    server = Server()
    with capturedLogs() as events:
        r = server.request("STATUS", b"JVMRoute=nosuchnode&Load=50")
    assert r.status_line == b"HTTP/1.1 500 Internal Server Error"
    assert r.headers[b"type"] == b"MEM"
    assert r.headers[b"mess"] == b'MEM: Can\'t read node with "nosuchnode" JVMRoute'
    assert r.headers[b"version"] == b"0.2.1"
    assert r.headers[b"connection"] == b"close"
    assert any("nosuchnode" in str(e.get("mess")) for e in events)
    # and it really closes (the Java listener reads a "close" reply until EOF)
    assert server.transport.disconnecting


def test_successful_reply_keeps_the_connection_open():
    server = Server()
    register(server)
    r = server.request("STATUS", b"JVMRoute=node1&Load=50")
    assert r.code == 200 and b"connection" not in r.headers
    assert not server.transport.disconnecting


def test_dangling_key_that_crashes_httpd_is_a_syntax_error():
    server = Server()
    register(server)
    r = server.request("STATUS", b"JVMRoute=node1&Load")
    assert r.code == 500 and r.headers[b"type"] == b"SYNTAX"
    # and the server still works
    server.connect()
    assert server.request("VERSION").code == 200


@pytest.mark.parametrize("body", [
    b"JVMRoute=node1&Load=%zz",
    b"JVMRoute=\xff\xfe&Load=1",
    b"JVMRoute=node1&Load=101",
    b"JVMRoute=no%0Ade&Load=1",
    b"&&&&",
    b"=",
    b"JVMRoute=node1&Load=1&Bogus=2",
])
def test_malformed_status_bodies_are_syntax_errors(body):
    server = Server()
    register(server)
    r = server.request("STATUS", body)
    assert r.code == 500 and r.headers[b"type"] == b"SYNTAX"
    assert server.registry.node("node1").rt.lbfactor == -1


def test_unknown_method_is_501_and_get_redirects_to_console():
    server = Server()
    r = server.request("FOOBAR", b"JVMRoute=node1")
    assert r.code == 501
    assert b"ENABLE-APP" in r.headers[b"allow"]
    server.connect()
    r = server.request("GET")
    assert r.code == 302


def test_methods_are_case_insensitive_and_wildcard_uri_star():
    server = Server()
    register(server)
    assert server.request("disable-app", b"JVMRoute=node1", uri=b"*").code == 200
    node = server.registry.node("node1")
    assert {c.state for _, c in server.registry.contexts_of(node)} == {ContextState.DISABLED}


def test_oversized_message_is_refused_before_reading_it():
    server = Server(max_message_size=1024)
    body = b"JVMRoute=node1&Alias=" + b"a" * 5000
    with capturedLogs() as events:
        responses = server.send(b"CONFIG / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                                % len(body) + body)
    # the log line names the method as text, not as a bytes repr
    from twisted.logger import formatEvent

    assert [formatEvent(e) for e in events if "refused" in e["log_format"]][0].startswith(
        "MCMP CONFIG from ")
    (r,) = responses
    assert r.code == 500 and r.headers[b"type"] == b"SYNTAX"
    assert b"exceeds" in r.headers[b"mess"]
    assert server.transport.disconnecting
    assert server.registry.node("node1") is None


def test_oversized_chunked_message_is_refused():
    server = Server(max_message_size=1024)
    chunk = b"a" * 800
    data = (b"CONFIG / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"320\r\n" + chunk + b"\r\n") * 3 + b"0\r\n\r\n")
    (r,) = server.send(data)
    assert r.code == 500 and server.transport.disconnecting


def test_ping_forms():
    server = Server()
    register(server)
    assert server.request("PING").body.startswith(b"Type=PING-RSP&State=OK&id=")
    r = server.request("PING", b"JVMRoute=node1")
    assert r.body.startswith(b"Type=PING-RSP&JVMRoute=node1&State=OK")
    r = server.request("PING", b"Scheme=ajp&Host=127.0.0.1&Port=8009")
    assert b"State=OK" in r.body
    # addresses that are not registered nodes are never connected to
    r = server.request("PING", b"Scheme=http&Host=10.1.2.3&Port=80")
    assert b"State=NOTOK" in r.body
    assert ("10.1.2.3", 80, "http") not in server.prober.probed
    r = server.request("PING", b"Scheme=ajp&Host=127.0.0.1")
    assert r.code == 500 and r.headers[b"type"] == b"SYNTAX"


def test_config_hard_change_replaces_and_same_worker_is_mem():
    server = Server()
    register(server)
    r = server.request("CONFIG", b"JVMRoute=node2&Host=127.0.0.1&Port=8009&Type=ajp")
    assert r.code == 500 and r.headers[b"mess"] == b"MEM: Another for the same worker already exist"
    server.connect()  # the error closed the connection; the Java listener reconnects
    r = server.request("CONFIG", b"JVMRoute=node1&Host=127.0.0.1&Port=9009&Type=ajp")
    assert r.code == 200
    assert server.registry.node("node1").settings.port == 9009


def test_thousands_of_nodes():
    server = Server()
    for i in range(2000):
        r = server.handler.handle("CONFIG", b"/", b"JVMRoute=n%d&Host=127.0.0.1&Port=%d&Type=http"
                                  % (i, 10000 + i))
        assert r.status == 200
    info = server.handler.info()
    assert len(parse_info_as_java(info)) == 2000


def test_mcmp_stats_are_recorded():
    class Stats:
        def __init__(self):
            self.seen = []

        def record(self, method, outcome):
            self.seen.append((method, outcome))

    clock = Clock()
    stats = Stats()
    handler = MCMPHandler(Registry(clock), Prober(), clock, stats=stats)
    handler.handle("INFO", b"/", b"")
    handler.handle("STATUS", b"/", b"JVMRoute=x&Load=1")
    handler.handle("ENABLE-APP", b"/", b"JVMRoute=")
    assert stats.seen == [("INFO", "ok"), ("STATUS", "MEM"), ("ENABLE-APP", "SYNTAX")]


def test_identity_policy_refuses_other_routes():
    from modcluster.tls import IdentityPolicy

    clock = Clock()
    registry = Registry(clock)
    handler = MCMPHandler(registry, Prober(), clock,
                          identity_policy=IdentityPolicy({"node1.example": ["node1"]}))
    ok = handler.handle("CONFIG", b"/", b"JVMRoute=node1&Host=127.0.0.1&Port=1",
                        identities=frozenset({"node1.example"}))
    assert ok.status == 200
    bad = handler.handle("CONFIG", b"/", b"JVMRoute=node2&Host=127.0.0.1&Port=2",
                         identities=frozenset({"node1.example"}))
    assert bad.status == 500 and b"node1.example" in dict(bad.headers)[b"Mess"]
    assert registry.node("node2") is None
    # read-only commands are fine for any verified certificate
    assert handler.handle("INFO", b"/", b"", identities=frozenset({"node1.example"})).status == 200


def test_refusals_are_logged_and_recorded_with_identity_and_address():
    """Every MCMP refusal names the certificate identity and the client, in the log
    line and in the event log (/api/v1/events)."""
    from twisted.logger import capturedLogs

    from modcluster.tls import IdentityPolicy

    clock = Clock()
    clock.advance(100)
    registry = Registry(clock)
    handler = MCMPHandler(registry, Prober(), clock,
                          identity_policy=IdentityPolicy({"node1.example": ["node1"]}))
    with capturedLogs() as events:
        handler.handle("CONFIG", b"/", b"JVMRoute=node2&Host=127.0.0.1&Port=2",
                       identities=frozenset({"node1.example"}), peer="127.0.0.1:4000")
        handler.handle("STATUS", b"/", b"JVMRoute=x&Load=1", peer="127.0.0.1:4001")
    lines = [e for e in events if "mcmp_error" in e]
    assert [(e["identity"], e["peer"]) for e in lines] == [
        ("node1.example", "127.0.0.1:4000"), ("-", "127.0.0.1:4001")]
    recorded = [e for e in registry.events if e["event"] == "mcmp.refused"]
    assert [(e["method"], e["identity"], e["peer"], e["type"], e["time"]) for e in recorded] == [
        ("CONFIG", "node1.example", "127.0.0.1:4000", "SYNTAX", 100),
        ("STATUS", "-", "127.0.0.1:4001", "MEM", 100)]


def test_server_header_names_the_product():
    server = Server()
    r = server.request("VERSION")
    assert r.headers[b"server"].startswith(b"txmodcluster/")
    assert r.body.startswith(b"release: mod_cluster/1.3.22.Final, protocol: 0.2.1")


def test_status_reuses_a_fresh_probe_and_coalesces_concurrent_ones():
    server = Server()
    register(server)
    server.request("STATUS", b"JVMRoute=node1&Load=50")
    assert len(server.prober.probed) == 1
    server.request("STATUS", b"JVMRoute=node1&Load=60")  # within probe_reuse (1 s)
    assert len(server.prober.probed) == 1
    assert server.registry.node("node1").rt.lbfactor == 60
    server.clock.advance(1.5)
    server.prober.hold = True
    first = server.handler.handle("STATUS", b"/", b"JVMRoute=node1&Load=70")
    second = server.handler.handle("STATUS", b"/", b"JVMRoute=node1&Load=80")
    assert len(server.prober.probed) == 2  # one new probe for both
    results = []
    first.addCallback(results.append)
    second.addCallback(results.append)
    server.prober.hold.callback(True)
    assert [b"State=OK" in r.body for r in results] == [True, True]


def test_probe_reuse_zero_probes_every_status_and_errors_always_reprobe():
    server = Server()
    server.handler.probe_reuse = 0
    register(server)
    server.request("STATUS", b"JVMRoute=node1&Load=50")
    server.request("STATUS", b"JVMRoute=node1&Load=50")
    assert len(server.prober.probed) == 2
    server.handler.probe_reuse = 10
    server.registry.set_error("node1", "test")
    server.request("STATUS", b"JVMRoute=node1&Load=50")
    assert len(server.prober.probed) == 3


def test_stalled_management_client_is_timed_out():
    from twisted.internet.testing import MemoryReactorClock

    clock = MemoryReactorClock()
    registry = Registry(clock)
    handler = MCMPHandler(registry, Prober(), clock)
    site = ManagementSite(ManagementRoot(MCMPResource(handler)), timeout=30, reactor=clock)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"CONFIG / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nJVMRoute=")
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting or transport.disconnected
    assert registry.node("node1") is None


def test_form_encoded_context_with_a_space_routes():
    """
    The Java listener sends C{/my app} as C{%2Fmy+app} and C{/a+b} as
    C{%2Fa%2Bb} (URLEncoder): both register decoded, and requests for the
    percent-encoded paths are routed to them (issue 14 §2).
    """
    from modcluster.balancer import Decision, RoutingPolicy, choose

    server = Server()
    r = server.request("CONFIG", b"JVMRoute=node1&Host=127.0.0.1&Port=8009&Type=ajp")
    assert r.code == 200
    for ctx in (b"%2Fmy+app", b"%2Fa%2Bb"):
        r = server.request("ENABLE-APP", b"JVMRoute=node1&Alias=localhost&Context=" + ctx)
        assert r.code == 200
    assert server.request("STATUS", b"JVMRoute=node1&Load=50").code == 200
    node = server.registry.node("node1")
    paths = {c.path for v in node.vhosts.values() for c in v.contexts.values()}
    assert paths == {"/my app", "/a+b"}
    info = server.request("INFO")
    assert b"Context: [1:1:1], Context: /my app," in info.body
    table = server.registry.table
    for path, context in (("/my%20app/index.jsp", "/my app"), ("/a+b/x", "/a+b"),
                          ("/a%2Bb/x", "/a+b")):
        d = choose(table, None, path, None, server.clock.seconds(), RoutingPolicy())
        assert isinstance(d, Decision), (path, d)
        assert d.context.path == context
    d = choose(table, None, "/my+app/", None, server.clock.seconds(), RoutingPolicy())
    assert not isinstance(d, Decision)  # '+' in a path is a plus, not a space


def test_error_mess_stays_short_for_huge_alias_lists():
    """
    Issue 13 §4: an ENABLE-APP with many long aliases refused for quota used to
    echo every alias in Mess (3.5 KB); the header is bounded now, and the
    refused command changed nothing.
    """
    server = Server(max_hosts=4)
    register(server)
    aliases = b"%2C".join(b"h%02d." % i + b"x" * 240 for i in range(14))
    r = server.request("ENABLE-APP", b"JVMRoute=node1&Alias=" + aliases + b"&Context=%2Fz")
    assert r.code == 500 and r.headers[b"type"] == b"MEM"
    assert len(r.headers[b"mess"]) <= 600
    assert r.headers[b"mess"].startswith(b"MEM: Can't update or insert host alias")
    assert "/z" not in {c.path for _, c in server.registry.contexts_of(
        server.registry.node("node1"))}


def test_config_naming_a_proxy_listener_is_a_mem_error():
    """
    A CONFIG whose Host and Port reach one of the balancer's own proxy
    listeners would make every request to that node come back to the
    balancer: refused with MEM (the node recovers by itself once its
    address is right; SYNTAX would make it give up on this balancer), in
    mod_proxy_cluster's format for a node it cannot insert, logged, and
    nothing registered.  Another port, or a name (not resolved), passes.
    """
    from modcluster.loops import ProxyAddresses

    server = Server()
    own = ProxyAddresses()
    own.add_source(lambda: [("127.0.0.1", 8000), ("0.0.0.0", 8443)])
    server.handler.own_addresses = own
    refused = [(b"127.0.0.1", b"8000", b"127.0.0.1:8000"),
               (b"localhost", b"8000", b"127.0.0.1:8000"),
               (b"[::ffff:127.0.0.1]", b"8000", b"127.0.0.1:8000"),
               (b"127.0.0.2", b"8443", b"0.0.0.0:8443")]
    for host, port, listener in refused:
        server.connect()
        with capturedLogs() as events:
            r = server.request("CONFIG", b"JVMRoute=loop&Host=%s&Port=%s&Type=http"
                               % (host, port))
        assert r.code == 500 and r.headers[b"type"] == b"MEM", host
        assert r.headers[b"mess"] == (
            b'MEM: Can\'t update or insert node with "loop" JVMRoute (%s is a proxy listener '
            b"of this balancer: forwarding loop)" % listener), r.headers[b"mess"]
        assert any("forwarding loop" in str(e.get("mess")) and e.get("method") == "CONFIG"
                   for e in events)
        assert server.transport.disconnecting
        assert "loop" not in [n.route for n in server.registry.table.nodes]
    for host, port in ((b"127.0.0.1", b"8001"), (b"127.0.0.2", b"8000"),
                       (b"node1.example.com", b"8000")):
        server.connect()
        r = server.request("CONFIG", b"JVMRoute=n-%s&Host=%s&Port=%s&Type=http"
                           % (port, host, port))
        assert r.code == 200, (host, port, r.headers)


def test_node_named_by_a_host_name_found_looping_by_the_data_plane():
    """
    A name is not resolved at CONFIG: the data plane finds the loop when it
    connects (modcluster.loops.LoopGuard) and reports it; the node is removed
    (warning, node.removing event), its Host:Port refused at CONFIG (MEM) until
    the next reload.  A stale report (the node re-registered elsewhere, or
    already removed) changes nothing.
    """
    from modcluster.loops import ProxyAddresses

    server = Server()
    own = ProxyAddresses()
    own.add_source(lambda: [("127.0.0.1", 8000)])
    server.handler.own_addresses = own
    config = b"JVMRoute=loop&Host=proxy.example&Port=8000&Type=http"
    assert server.request("CONFIG", config).code == 200  # a name: not resolved here
    assert server.request("ENABLE-APP", b"JVMRoute=loop&Alias=localhost&Context=/app").code == 200
    server.handler.forwarding_loop_found("loop", "proxy.example:9999", "127.0.0.1:8000",
                                         "127.0.0.1:8000")  # not its address: stale
    assert [n.route for n in server.registry.table.nodes] == ["loop"]
    with capturedLogs() as events:
        server.handler.forwarding_loop_found("loop", "proxy.example:8000", "127.0.0.1:8000",
                                             "127.0.0.1:8000")
        server.handler.forwarding_loop_found("loop", "proxy.example:8000", "127.0.0.1:8000",
                                             "127.0.0.1:8000")  # a second connection's
    assert [n.route for n in server.registry.table.nodes] == []
    warnings = [e for e in events if "forwarding loop" in e.get("log_format", "")]
    assert len(warnings) == 1 and warnings[0]["route"] == "loop"
    removing = [e for e in events if e.get("log_format", "").startswith("node {route} marked")]
    assert len(removing) == 1 and "forwarding loop" in removing[0]["why"]
    server.connect()
    r = server.request("CONFIG", config)
    assert r.code == 500 and r.headers[b"type"] == b"MEM"
    assert b"127.0.0.1:8000 is a proxy listener" in r.headers[b"mess"]
    server.connect()
    assert server.request("CONFIG", config.replace(b"8000", b"8001")).code == 200
    server.handler.forget_named_loops()  # a reload
    server.connect()
    assert server.request("CONFIG", config).code == 200


def test_config_loop_check_with_hostile_host_and_port():
    """
    The forwarding-loop check sees only what CONFIG's decoding lets through:
    a Port of 0, 65536 or not a number is SYNTAX before it, a Host longer
    than the limit too; odd spellings of loopback are refused as loops, a
    Host the node connection cannot use (spaces, a zone on IPv4) is no loop.
    """
    from modcluster.loops import ProxyAddresses

    server = Server()
    own = ProxyAddresses()
    own.add_source(lambda: [("::", 8000)])  # dual stack: IPv4 and IPv6
    server.handler.own_addresses = own

    def config(host: bytes, port: bytes):
        server.connect()
        return server.request("CONFIG", b"JVMRoute=n&Host=%s&Port=%s&Type=http" % (host, port))

    for port in (b"0", b"65536", b"abc", b"8000 ", b"-8000", b"0x1f40"):
        r = config(b"127.0.0.1", port)
        assert r.code == 500 and r.headers[b"type"] == b"SYNTAX", (port, r.headers)
    r = config(b"1" * 200, b"8000")
    assert r.code == 500 and r.headers[b"type"] == b"SYNTAX", r.headers
    for host in (b"127.1", b"2130706433", b"0x7f.1", b"0177.0.0.1", b"127.000.000.001",
                 b"%5B%3A%3Affff%3A127.0.0.1%5D", b"%5B%3A%3A1%5D", b"%3A%3A", b"0.0.0.0",
                 b"LOCALHOST.", b"%5B%3A%3A1%25lo%5D"):
        r = config(host, b"8000")
        assert r.code == 500 and r.headers[b"type"] == b"MEM", (host, r.headers)
        assert b"forwarding loop" in r.headers[b"mess"], host
    assert [n.route for n in server.registry.table.nodes] == []
    r = config(b"127.0.0.1+", b"8000")  # a space: the node connection refuses the name
    assert r.code == 200, r.headers
