"""
Tests for L{modcluster.ajp.protocol.AJPClientProtocol}, in memory
(StringTransport + task.Clock, and iosim against the fake container).
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer
from zope.interface.verify import verifyObject

from modcluster.ajp.container import (
    encode_end_response,
    encode_get_body_chunk,
    encode_send_body_chunk,
    encode_send_headers,
)
from modcluster.ajp.packets import (
    BadMagic,
    CPING_PACKET,
    CPONG_PACKET,
    EMPTY_BODY_PACKET,
    ForwardRequest,
    ForwardRequestEncoder,
    RequestTooLarge,
    UnexpectedMessage,
    body_chunk_header,
    encode_forward_request,
)
from modcluster.ajp.protocol import (
    AJPClientProtocol,
    AJPConnectionBusy,
    AJPReadTimeout,
    CPingFailed,
    IAJPResponseReceiver,
)
from modcluster.ajp.testing import ContainerExchange, FakeAJPContainer, echo, respond


@implementer(IAJPResponseReceiver)
class Receiver:
    """
    Records what the protocol reports.
    """

    def __init__(self, onEnd=None):
        self.events = []
        self.onEnd = onEnd
        self.written = 0
        self.readsComplete = 0

    def requestWritten(self):
        self.written += 1

    def readComplete(self):
        self.readsComplete += 1

    def headReceived(self, status, reason, headers):
        self.events.append(("head", status, reason, headers))

    def bodyReceived(self, data):
        self.events.append(("body", data))

    def responseEnded(self, reusable):
        self.events.append(("end", reusable))
        if self.onEnd is not None:
            self.onEnd()

    def responseFailed(self, reason, responseStarted, requestSent):
        self.events.append(("failed", reason.value, responseStarted, requestSent))

    @property
    def body(self):
        return b"".join(e[1] for e in self.events if e[0] == "body")

    @property
    def last(self):
        return self.events[-1]


@implementer(IPushProducer)
class Producer:
    """
    A client transport stand-in that records pause/resume.
    """

    def __init__(self):
        self.state = "producing"
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")
        self.state = "paused"

    def resumeProducing(self):
        self.calls.append("resume")
        self.state = "producing"

    def stopProducing(self):
        self.calls.append("stop")
        self.state = "stopped"


def request(method=b"GET", headers=(), **kw) -> ForwardRequest:
    return ForwardRequest(method, b"HTTP/1.1", b"/app", b"127.0.0.1", b"127.0.0.1",
                          b"localhost", 8000, False, tuple(headers), **kw)


HEAD_200 = encode_send_headers(200, b"200", [(b"Content-Type", b"text/plain")])


def connect(readTimeout=None, maxPacketSize=8192):
    clock = Clock()
    proto = AJPClientProtocol(clock, maxPacketSize=maxPacketSize, readTimeout=readTimeout)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock


def sent(transport) -> bytes:
    data = transport.value()
    transport.clear()
    return data


def test_interfaces():
    """
    The protocol is an IPushProducer; the receiver interface is implementable.
    """
    proto, transport, clock = connect()
    verifyObject(IPushProducer, proto)
    verifyObject(IAJPResponseReceiver, Receiver())


def test_get_reused():
    """
    GET: one FORWARD_REQUEST write; headers, body chunks (trailing byte
    removed) and END_RESPONSE reuse=1 reach the receiver; the connection is
    idle and reusable afterwards.
    """
    proto, transport, clock = connect()
    assert proto.reusable
    receiver = Receiver()
    req = request(headers=[(b"Host", b"localhost")])
    proto.sendRequest(req, receiver)
    assert sent(transport) == encode_forward_request(req)
    assert proto.busy and not proto.reusable
    proto.dataReceived(HEAD_200 + encode_send_body_chunk(b"hello ")
                       + encode_send_body_chunk(b"world") + encode_end_response(True))
    assert receiver.events == [
        ("head", 200, b"200", ((b"Content-Type", b"text/plain"),)),
        ("body", b"hello "), ("body", b"world"), ("end", True),
    ]
    assert proto.reusable and not proto.busy
    assert not transport.disconnecting
    assert transport.value() == b""

    second = Receiver()
    proto.sendRequest(encode_forward_request(req), second)
    assert sent(transport) == encode_forward_request(req)
    proto.dataReceived(HEAD_200 + encode_end_response(True))
    assert second.events[-1] == ("end", True)
    assert proto.requestsSent == 2


def test_response_split_across_reads():
    """
    Packets split at arbitrary points are reassembled.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    stream = HEAD_200 + encode_send_body_chunk(b"x" * 1000) + encode_end_response(True)
    for i in range(0, len(stream), 7):
        proto.dataReceived(stream[i:i + 7])
    assert receiver.body == b"x" * 1000
    assert receiver.last == ("end", True)


def test_reuse_zero_closes():
    """
    END_RESPONSE reuse=0: not reusable, the connection is closed.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    proto.dataReceived(encode_send_headers(500, b"500") + encode_end_response(False))
    assert receiver.events == [("head", 500, b"500", ()), ("end", False)]
    assert transport.disconnecting
    assert not proto.reusable
    with pytest.raises(AJPConnectionBusy):
        proto.sendRequest(request(), Receiver())


def test_head_and_304_without_body():
    """
    HEAD (code 3) and a 304 answer: headers then END_RESPONSE, no body.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(b"HEAD"), receiver)
    assert sent(transport)[5] == 3
    proto.dataReceived(encode_send_headers(200, b"200", [(b"Content-Length", b"1234")])
                       + encode_end_response(True))
    assert receiver.events == [("head", 200, b"200", ((b"Content-Length", b"1234"),)),
                               ("end", True)]
    receiver = Receiver()
    proto.sendRequest(request(headers=[(b"If-None-Match", b'"x"')]), receiver)
    proto.dataReceived(encode_send_headers(304, b"304") + encode_end_response(True))
    assert receiver.events == [("head", 304, b"304", ()), ("end", True)]


def test_flush_chunks():
    """
    An empty SEND_BODY_CHUNK is delivered as an empty body (flush); before
    the headers it is ignored, as httpd does.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    proto.dataReceived(encode_send_body_chunk(b"") + HEAD_200 + encode_send_body_chunk(b"")
                       + encode_end_response(True))
    assert [e[0] for e in receiver.events] == ["head", "body", "end"]
    assert receiver.events[1] == ("body", b"")
    assert receiver.last == ("end", True)


def test_post_known_length_flow_control():
    """
    POST with Content-Length 20000 (reference §9): the first 8186 bytes go
    unasked with the request, each further packet only answers a
    GET_BODY_CHUNK, and an extra GET gets the empty packet.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    body = bytes(range(256)) * 78 + b"z" * 32  # 20000 bytes
    assert len(body) == 20000
    req = request(b"POST", [(b"Content-Length", b"20000")])
    channel = proto.sendRequest(req, receiver, bodyLength=20000)
    assert sent(transport) == encode_forward_request(req)
    assert channel.write(body[:12000])
    assert sent(transport) == bytes.fromhex("12 34 1F FC 1F FA") + body[:8186]
    assert channel.write(body[12000:])
    assert channel.finish()
    assert transport.value() == b""  # nothing unasked

    proto.dataReceived(encode_get_body_chunk(8186))
    assert sent(transport) == bytes.fromhex("12 34 1F FC 1F FA") + body[8186:16372]
    proto.dataReceived(encode_get_body_chunk(8186))
    assert sent(transport) == bytes.fromhex("12 34 0E 2E 0E 2C") + body[16372:]
    proto.dataReceived(encode_get_body_chunk(8186))
    assert sent(transport) == EMPTY_BODY_PACKET
    proto.dataReceived(HEAD_200 + encode_end_response(True))
    assert receiver.last == ("end", True)
    assert proto.reusable
    assert not channel.active
    assert not channel.write(b"late")  # detached
    assert transport.value() == b""


def test_post_body_with_request_single_write():
    """
    Body bytes given to sendRequest go out in the same write as the request.
    """
    proto, transport, clock = connect()
    req = request(b"POST", [(b"Content-Length", b"7")])
    writes = []
    transport.write = lambda data: writes.append(data)
    proto.sendRequest(req, Receiver(), bodyLength=7, body=b"a=1&b=2").finish()
    assert writes == [encode_forward_request(req) + bytes.fromhex("12 34 00 09 00 07")
                      + b"a=1&b=2"]


def test_get_body_chunk_requested_smaller():
    """
    A GET_BODY_CHUNK for fewer bytes than queued is answered with exactly that
    many.
    """
    proto, transport, clock = connect()
    channel = proto.sendRequest(request(b"PUT"), Receiver(), bodyLength=None)
    channel.write(b"abcdefghij")
    assert sent(transport) == encode_forward_request(request(b"PUT"))
    proto.dataReceived(encode_get_body_chunk(4))
    assert sent(transport) == body_chunk_header(4) + b"abcd"
    proto.dataReceived(encode_get_body_chunk(100))
    assert sent(transport) == body_chunk_header(6) + b"efghij"


def test_get_body_chunk_asking_beyond_the_packet_size_gets_one_packet():
    """
    A container asking for more than a packet can carry (0xFFFF with 8 KiB
    packets) gets at most one packet's worth (packet size - 6), never a
    packet larger than the negotiated size.
    """
    proto, transport, clock = connect()
    channel = proto.sendRequest(request(b"PUT"), Receiver(), bodyLength=None)
    channel.write(b"x" * 20000)
    sent(transport)
    proto.dataReceived(encode_get_body_chunk(0xFFFF))
    assert sent(transport) == body_chunk_header(8186) + b"x" * 8186


def test_chunked_body_waits_for_get_body_chunk():
    """
    Unknown length: nothing is sent unasked; a GET with nothing queued waits
    for client data, which then goes out at once; finish() answers the next
    GET with the empty packet; a GET after that is a protocol error.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    req = request(b"POST", [(b"Transfer-Encoding", b"chunked")])
    channel = proto.sendRequest(req, receiver, bodyLength=None)
    sent(transport)
    channel.write(b"first")
    assert transport.value() == b""
    proto.dataReceived(encode_get_body_chunk(8186))
    assert sent(transport) == body_chunk_header(5) + b"first"
    proto.dataReceived(encode_get_body_chunk(8186))
    assert transport.value() == b""  # waiting for the client
    channel.write(b"second")
    assert sent(transport) == body_chunk_header(6) + b"second"
    channel.finish()
    assert transport.value() == b""
    proto.dataReceived(encode_get_body_chunk(8186))
    assert sent(transport) == EMPTY_BODY_PACKET
    assert not channel.write(b"more")  # body already finished
    proto.dataReceived(encode_get_body_chunk(8186))
    assert isinstance(receiver.last[1], UnexpectedMessage)
    assert receiver.last[2:] == (False, True)
    assert transport.disconnected  # aborted


def test_chunked_finish_while_get_pending():
    """
    finish() while a GET is pending sends the empty packet immediately.
    """
    proto, transport, clock = connect()
    channel = proto.sendRequest(request(b"POST"), Receiver(), bodyLength=None)
    sent(transport)
    proto.dataReceived(encode_get_body_chunk(8186))
    channel.finish()
    assert sent(transport) == EMPTY_BODY_PACKET


def test_no_body_get_answered_empty():
    """
    A request without body answers a GET_BODY_CHUNK with the empty packet.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    channel = proto.sendRequest(request(), receiver)
    sent(transport)
    assert not channel.write(b"x")
    proto.dataReceived(encode_get_body_chunk(8186))
    assert sent(transport) == EMPTY_BODY_PACKET
    proto.dataReceived(HEAD_200 + encode_end_response(True))
    assert receiver.last == ("end", True)
    with pytest.raises(ValueError):
        proto.sendRequest(request(), Receiver(), bodyLength=0, body=b"x")


def test_known_length_finish_without_data():
    """
    A known length whose client sends nothing: finish() sends the empty packet
    instead of leaving the container waiting for the first packet.
    """
    proto, transport, clock = connect()
    channel = proto.sendRequest(request(b"POST"), Receiver(), bodyLength=10)
    sent(transport)
    channel.finish()
    assert sent(transport) == EMPTY_BODY_PACKET


def test_get_body_chunk_after_headers():
    """
    GET_BODY_CHUNK is answered also after SEND_HEADERS (Tomcat drains the
    pending packet when the application did not read the body).
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    channel = proto.sendRequest(request(b"POST"), receiver, bodyLength=None)
    sent(transport)
    channel.write(b"data")
    proto.dataReceived(HEAD_200 + encode_send_body_chunk(b"resp") + encode_get_body_chunk(8186))
    assert sent(transport) == body_chunk_header(4) + b"data"
    proto.dataReceived(encode_end_response(True))
    assert receiver.events[-2:] == [("body", b"resp"), ("end", True)]
    assert proto.reusable


def test_two_unanswered_get_body_chunks():
    """
    A second GET_BODY_CHUNK while one is unanswered is a protocol error.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(b"POST"), receiver, bodyLength=None)
    proto.dataReceived(encode_get_body_chunk(8186) + encode_get_body_chunk(8186))
    assert isinstance(receiver.last[1], UnexpectedMessage)
    assert transport.disconnected


def test_end_response_with_body_owed_not_reusable():
    """
    END_RESPONSE reuse=1 while a GET_BODY_CHUNK is unanswered: the exchange is
    incomplete, so the connection is closed, not reused.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    channel = proto.sendRequest(request(b"POST"), receiver, bodyLength=None)
    proto.dataReceived(encode_get_body_chunk(8186) + HEAD_200 + encode_end_response(True))
    assert receiver.last == ("end", False)
    assert transport.disconnecting
    assert not channel.active


def test_unread_body_still_reusable():
    """
    The application did not read the body: Tomcat swallows the first packet
    and ends with reuse=1; nothing is owed, so the connection is reusable and
    the rest of the client body is discarded.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    channel = proto.sendRequest(request(b"POST"), receiver, bodyLength=20000, body=b"x" * 9000)
    assert sent(transport).endswith(body_chunk_header(8186) + b"x" * 8186)
    proto.dataReceived(HEAD_200 + encode_end_response(True))
    assert receiver.last == ("end", True)
    assert proto.reusable
    assert not channel.write(b"x" * 11000)
    assert transport.value() == b""


def test_body_producer_backpressure():
    """
    The body producer is paused once a full packet is queued beyond what the
    container asked for, resumed when the queue drains, and left producing
    when the exchange ends.
    """
    proto, transport, clock = connect()
    producer = Producer()
    receiver = Receiver()
    channel = proto.sendRequest(request(b"POST"), receiver, bodyLength=None)
    channel.registerProducer(producer, True)
    channel.write(b"a" * 5000)
    assert producer.calls == []
    channel.write(b"b" * 5000)
    assert producer.state == "paused"
    proto.dataReceived(encode_get_body_chunk(8186))
    assert producer.state == "producing"  # 1814 bytes left
    channel.write(b"c" * 8000)
    assert producer.state == "paused"
    proto.dataReceived(HEAD_200 + encode_end_response(True))
    assert producer.state == "producing"
    assert producer.calls == ["pause", "resume", "pause", "resume"]
    with pytest.raises(TypeError):
        channel.registerProducer(producer, False)


def test_register_producer_with_backlog_pauses():
    """
    Registering a producer when a packet's worth is already queued pauses it
    at once; unregistering resumes it.
    """
    proto, transport, clock = connect()
    channel = proto.sendRequest(request(b"POST"), Receiver(), bodyLength=None, body=b"x" * 9000)
    producer = Producer()
    channel.registerProducer(producer, True)
    assert producer.state == "paused"
    channel.unregisterProducer()
    assert producer.state == "producing"


def test_response_backpressure():
    """
    pauseProducing/resumeProducing on the protocol pause the backend
    transport; stopProducing aborts it silently.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    proto.pauseProducing()
    assert transport.producerState == "paused"
    proto.resumeProducing()
    assert transport.producerState == "producing"
    proto.stopProducing()
    assert transport.disconnected
    proto.connectionLost(Failure(ConnectionDone()))
    assert receiver.events == []


def test_cping_success():
    """
    cping() writes CPING; CPONG fires True and the connection stays usable.
    """
    proto, transport, clock = connect()
    d = proto.cping(10)
    assert sent(transport) == CPING_PACKET
    assert proto.busy
    with pytest.raises(AJPConnectionBusy):
        proto.cping(10)
    proto.dataReceived(CPONG_PACKET)
    assert d.result is True
    assert proto.reusable
    clock.advance(20)
    assert not transport.disconnecting
    assert clock.getDelayedCalls() == []


def test_cping_timeout():
    """
    No CPONG in time: False, connection dropped; a late CPONG is ignored.
    """
    proto, transport, clock = connect()
    d = proto.cping(10)
    clock.advance(9.9)
    assert not hasattr(d, "result")
    clock.advance(0.1)
    assert d.result is False
    assert transport.disconnected
    proto.dataReceived(CPONG_PACKET)
    assert not proto.reusable


def test_cping_wrong_answer_and_loss():
    """
    Anything but CPONG, or connection loss, fires False.
    """
    proto, transport, clock = connect()
    d = proto.cping(10)
    proto.dataReceived(encode_end_response(True))
    assert d.result is False
    assert transport.disconnected

    proto, transport, clock = connect()
    d = proto.cping(10)
    proto.dataReceived(b"garbage!")
    assert d.result is False

    proto, transport, clock = connect()
    d = proto.cping(10)
    proto.connectionLost(Failure(ConnectionLost()))
    assert d.result is False
    assert clock.getDelayedCalls() == []


def test_cping_cancel():
    """
    Cancelling the CPING Deferred drops the connection.
    """
    proto, transport, clock = connect()
    d = proto.cping(10)
    d.cancel()
    assert transport.disconnected
    assert clock.getDelayedCalls() == []
    d.addErrback(lambda f: None)


def test_ping_before_request():
    """
    With pingTimeout the request waits for CPONG, then goes out together with
    any queued first body packet.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    req = request(b"POST", [(b"Content-Length", b"3")])
    channel = proto.sendRequest(req, receiver, bodyLength=3, pingTimeout=5)
    channel.write(b"abc")
    channel.finish()
    assert sent(transport) == CPING_PACKET
    proto.dataReceived(CPONG_PACKET)
    assert sent(transport) == encode_forward_request(req) + body_chunk_header(3) + b"abc"
    proto.dataReceived(HEAD_200 + encode_end_response(True))
    assert receiver.last == ("end", True)
    clock.advance(10)
    assert proto.reusable


def test_ping_before_request_timeout():
    """
    No CPONG before the request: CPingFailed, nothing but CPING was sent, the
    connection is dropped.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver, pingTimeout=5)
    clock.advance(5)
    assert transport.value() == CPING_PACKET
    assert isinstance(receiver.last[1], CPingFailed)
    assert receiver.last[2:] == (False, False)
    assert transport.disconnected
    proto.connectionLost(Failure(ConnectionDone()))
    assert len(receiver.events) == 1


def test_ping_before_request_connection_lost():
    """
    Connection lost while waiting for the CPONG: CPingFailed too.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver, pingTimeout=5)
    proto.connectionLost(Failure(ConnectionLost()))
    assert isinstance(receiver.last[1], CPingFailed)
    assert clock.getDelayedCalls() == []


def test_connection_lost_mid_response():
    """
    Connection lost after the headers: failure with responseStarted=True.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    proto.dataReceived(HEAD_200 + encode_send_body_chunk(b"part"))
    lost = []
    proto.onConnectionLost = lambda p, reason: lost.append((p, reason))
    proto.connectionLost(Failure(ConnectionLost()))
    assert receiver.events[-1][0] == "failed"
    assert isinstance(receiver.last[1], ConnectionLost)
    assert receiver.last[2:] == (True, True)
    assert not proto.requestBodySent
    assert lost and lost[0][0] is proto
    assert not proto.reusable


def test_connection_lost_before_response_after_body():
    """
    Connection lost before any response byte, after body bytes were sent:
    responseStarted=False, requestBodySent=True.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(b"POST"), receiver, bodyLength=3, body=b"abc")
    proto.connectionLost(Failure(ConnectionLost()))
    assert receiver.last[2:] == (False, True)
    assert proto.requestBodySent


def test_garbage_from_container():
    """
    Bad bytes mid-response: messages before them are delivered, then the
    receiver gets the typed error once, the connection is aborted and the
    error is logged.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    with capturedLogs() as events:
        proto.dataReceived(HEAD_200 + b"HTTP/1.1 200 OK\r\n\r\n")
    assert receiver.events[0][0] == "head"
    assert receiver.last[0] == "failed"
    assert isinstance(receiver.last[1], BadMagic)
    assert receiver.last[2:] == (True, True)
    assert transport.disconnected
    assert any("protocol error" in e["log_format"] for e in events)
    proto.dataReceived(encode_end_response(True))
    proto.connectionLost(Failure(ConnectionLost()))
    assert len(receiver.events) == 2


@pytest.mark.parametrize("stream", [
    HEAD_200 + HEAD_200,  # second SEND_HEADERS
    encode_end_response(True),  # END_RESPONSE before SEND_HEADERS
    encode_send_body_chunk(b"x"),  # body before headers
    CPONG_PACKET,  # CPONG during a request
])
def test_unexpected_messages(stream):
    """
    Well-formed messages in the wrong state are protocol errors.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    proto.dataReceived(stream)
    assert isinstance(receiver.last[1], UnexpectedMessage)
    assert transport.disconnected


def test_data_while_idle():
    """
    Anything from the container while idle drops the connection, and the pool
    hook hears about it.
    """
    proto, transport, clock = connect()
    lost = []
    proto.onConnectionLost = lambda p, reason: lost.append(reason)
    with capturedLogs() as events:
        proto.dataReceived(encode_send_body_chunk(b"stray"))
    assert transport.disconnected
    assert not proto.reusable
    assert any("protocol error" in e["log_format"] for e in events)
    proto.connectionLost(Failure(ConnectionDone()))
    assert len(lost) == 1


@pytest.mark.parametrize("stray", [
    b"A",  # a packet's first byte
    HEAD_200[:5],  # a SEND_HEADERS' header and type: its length would swallow the next answer
    encode_end_response(True) + HEAD_200[:3],  # a whole packet, then a start
])
def test_part_of_a_packet_while_idle_closes_the_connection(stray):
    """
    Bytes while idle close the connection even when they are not a whole
    packet yet: before, a packet's beginning after END_RESPONSE (in a later
    read) waited in the parser, the connection stayed reusable, and the next
    exchange's response (maybe another client's) was read as its rest.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    proto.dataReceived(HEAD_200 + encode_end_response(True))
    assert receiver.last == ("end", True) and proto.reusable
    with capturedLogs() as events:
        proto.dataReceived(stray)
    assert not proto.reusable
    assert transport.disconnected
    assert any("protocol error" in e["log_format"] for e in events)
    with pytest.raises(AJPConnectionBusy):
        proto.sendRequest(request(), Receiver())


def test_data_after_end_response_in_same_read():
    """
    Bytes following END_RESPONSE in the same read: the response completes
    but the connection is not reused.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    proto.dataReceived(HEAD_200 + encode_end_response(True) + CPONG_PACKET[:2])
    assert receiver.last == ("end", False)
    assert transport.disconnecting
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    proto.dataReceived(HEAD_200 + encode_end_response(True) + CPONG_PACKET)
    assert receiver.last == ("end", False)


def test_next_request_from_response_ended():
    """
    The receiver may send the next request from responseEnded.
    """
    proto, transport, clock = connect()
    second = Receiver()
    first = Receiver(onEnd=lambda: proto.sendRequest(request(b"OPTIONS"), second))
    proto.sendRequest(request(), first)
    sent(transport)
    proto.dataReceived(HEAD_200 + encode_end_response(True))
    assert sent(transport) == encode_forward_request(request(b"OPTIONS"))
    proto.dataReceived(HEAD_200 + encode_end_response(True))
    assert second.last == ("end", True)


def test_busy_and_too_large():
    """
    sendRequest on a busy connection raises; a request too large raises before
    anything is sent and leaves the connection idle.
    """
    proto, transport, clock = connect()
    with pytest.raises(RequestTooLarge):
        proto.sendRequest(request(headers=[(b"X", b"x" * 9000)]), Receiver())
    assert proto.reusable and transport.value() == b""
    proto.sendRequest(request(), Receiver())
    with pytest.raises(AJPConnectionBusy):
        proto.sendRequest(request(), Receiver())
    with pytest.raises(AJPConnectionBusy):
        proto.cping(1)
    with pytest.raises(ValueError):
        AJPClientProtocol(Clock(), 8192, encoder=ForwardRequestEncoder(65536))
    unconnected = AJPClientProtocol(Clock())
    with pytest.raises(AJPConnectionBusy):
        unconnected.sendRequest(request(), Receiver())


def test_read_timeout():
    """
    No data for readTimeout seconds while a response is due: AJPReadTimeout,
    connection aborted.  Every read restarts the wait.
    """
    proto, transport, clock = connect(readTimeout=30)
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    clock.advance(20)
    proto.dataReceived(HEAD_200)
    clock.advance(20)
    assert receiver.events[-1][0] == "head"
    proto.dataReceived(encode_send_body_chunk(b"x")[:3])
    clock.advance(29)
    assert not transport.disconnected
    clock.advance(1)
    assert isinstance(receiver.last[1], AJPReadTimeout)
    assert receiver.last[2:] == (True, True)
    assert transport.disconnected


def test_read_timeout_timer_shared_between_requests():
    """
    One timer per connection: it survives the end of an exchange, times the
    next request from that request's start, and lapses while idle.
    """
    proto, transport, clock = connect(readTimeout=30)
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    clock.advance(10)
    proto.dataReceived(HEAD_200 + encode_end_response(True))
    [timer] = clock.getDelayedCalls()
    clock.advance(10)  # t=20
    second = Receiver()
    proto.sendRequest(request(), second)
    assert clock.getDelayedCalls() == [timer]
    clock.advance(29)  # t=49: 29 s after the second request started
    assert not transport.disconnected
    proto.dataReceived(HEAD_200 + encode_end_response(True))
    clock.advance(100)
    assert proto.reusable
    assert clock.getDelayedCalls() == []
    third = Receiver()
    proto.sendRequest(request(), third)
    clock.advance(30)
    assert isinstance(third.last[1], AJPReadTimeout)
    assert [e[0] for e in second.events] == ["head", "end"]


def test_timers_cancelled_when_closed():
    """
    A connection closed at END_RESPONSE (reuse=0) leaves no timer behind.
    """
    proto, transport, clock = connect(readTimeout=30)
    proto.sendRequest(request(), Receiver())
    proto.dataReceived(HEAD_200 + encode_end_response(False))
    assert clock.getDelayedCalls() == []


def test_read_timeout_suspended_while_paused_or_waiting_for_client():
    """
    Paused by the client side, or waiting for client body the container asked
    for: the read timeout does not fire.
    """
    proto, transport, clock = connect(readTimeout=30)
    receiver = Receiver()
    channel = proto.sendRequest(request(b"POST"), receiver, bodyLength=None)
    proto.dataReceived(encode_get_body_chunk(8186))
    clock.advance(100)  # waiting for the client body
    assert not transport.disconnected
    channel.write(b"x")
    channel.finish()
    proto.dataReceived(encode_get_body_chunk(8186) + HEAD_200)
    proto.pauseProducing()
    clock.advance(100)
    assert not transport.disconnected
    proto.resumeProducing()
    clock.advance(29)
    assert not transport.disconnected
    clock.advance(1)
    assert isinstance(receiver.last[1], AJPReadTimeout)


def test_abort_detaches_silently():
    """
    abort() drops the connection without calling the receiver.
    """
    proto, transport, clock = connect(readTimeout=5)
    receiver = Receiver()
    channel = proto.sendRequest(request(), receiver)
    proto.abort()
    assert transport.disconnected
    assert not channel.active
    proto.connectionLost(Failure(ConnectionDone()))
    assert receiver.events == []
    assert clock.getDelayedCalls() == []


# --- against the fake container (iosim) ------------------------------------------------


def pair(handler, maxPacketSize=8192, readTimeout=None):
    clock = Clock()
    container = FakeAJPContainer(handler, maxPacketSize)
    client, server, pump = iosim.connectedServerAndClient(
        lambda: container,
        lambda: AJPClientProtocol(clock, maxPacketSize, readTimeout=readTimeout),
        clock=clock,
    )
    return client, server, pump, clock


@pytest.mark.parametrize("size", [0, 1, 8185, 8186, 8187, 20000, 100000])
@pytest.mark.parametrize("known", [True, False])
def test_echo_through_fake_container(size, known):
    """
    Bodies of many sizes, known length or chunked, go through the container
    and back intact, and the connection is reused.
    """
    client, server, pump, clock = pair(echo)
    body = bytes(i % 251 for i in range(size))
    headers = [(b"Content-Length", b"%d" % size)] if known else [(b"Transfer-Encoding", b"chunked")]
    receiver = Receiver()
    channel = client.sendRequest(request(b"POST", headers), receiver,
                                 bodyLength=size if known else None)
    for i in range(0, size, 3000):
        channel.write(body[i:i + 3000])
        pump.flush()
    channel.finish()
    pump.flush()
    assert server.errors == []
    assert receiver.events[0][1] == 200
    assert receiver.body == body
    assert receiver.last == ("end", True)
    assert client.reusable
    exchange_count = len(server.requests)
    assert exchange_count == 1


def test_sequential_requests_and_cping_on_fake_container():
    """
    Several requests and CPINGs on one connection; 64 KiB packets.
    """
    client, server, pump, clock = pair(respond(200, [(b"X-A", b"1")], b"r" * 70000), 65536)
    for _ in range(3):
        d = client.cping(5)
        pump.flush()
        assert d.result is True
        receiver = Receiver()
        client.sendRequest(request(), receiver, pingTimeout=5)
        pump.flush()
        assert receiver.events[0] == ("head", 200, b"200", ((b"X-A", b"1"),))
        assert receiver.body == b"r" * 70000
        assert [len(e[1]) for e in receiver.events if e[0] == "body"] == [65528, 4472]
        assert receiver.last == ("end", True)
    assert server.cpings == 6
    assert len(server.requests) == 3
    assert server.errors == []


def test_fake_container_reads_request_fields():
    """
    The container sees the request fields and attributes the codec sent.
    """
    seen = []

    def handler(exchange: ContainerExchange):
        seen.append(exchange.request)
        respond()(exchange)

    client, server, pump, clock = pair(handler)
    req = request(b"PATCH", [(b"Host", b"example")], jvm_route=b"node1", secret=b"s",
                  attributes=((b"AJP_REMOTE_PORT", b"4242"),))
    receiver = Receiver()
    client.sendRequest(req, receiver)
    pump.flush()
    [got] = seen
    assert got.method == b"PATCH"
    assert got.headers == ((b"host", b"example"),)
    assert (got.jvm_route, got.secret, got.attributes) == (b"node1", b"s", ((b"AJP_REMOTE_PORT", b"4242"),))
    assert receiver.last == ("end", True)


def test_fake_container_closing_connection():
    """
    A container that ends with reuse=0 and closes: the client reports a
    non-reusable end, then the connection goes.
    """
    client, server, pump, clock = pair(respond(503, reuse=False))
    receiver = Receiver()
    lost = []
    client.onConnectionLost = lambda p, r: lost.append(r)
    client.sendRequest(request(), receiver)
    pump.flush()
    assert receiver.events == [("head", 503, b"503", ()), ("end", False)]
    assert lost


def test_request_written_and_read_complete():
    """
    requestWritten comes with the FORWARD_REQUEST write (on CPONG when
    pinging first); readComplete follows each read that delivered head or
    body, but not one that ended or failed the exchange.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver, pingTimeout=5)
    assert receiver.written == 0
    proto.dataReceived(CPONG_PACKET)
    assert receiver.written == 1
    proto.dataReceived(encode_get_body_chunk(10))
    assert receiver.readsComplete == 0
    proto.dataReceived(HEAD_200 + encode_send_body_chunk(b"a"))
    assert receiver.readsComplete == 1
    proto.dataReceived(encode_send_body_chunk(b"b")[:5])
    assert receiver.readsComplete == 1
    proto.dataReceived(encode_send_body_chunk(b"b")[5:])
    assert receiver.readsComplete == 2
    proto.dataReceived(encode_send_body_chunk(b"c") + encode_end_response(True))
    assert receiver.readsComplete == 2
    assert receiver.last == ("end", True)

    second = Receiver()
    proto.sendRequest(request(), second)
    assert second.written == 1
    proto.dataReceived(HEAD_200 + b"garbage")
    assert second.readsComplete == 0
    assert second.last[0] == "failed"


def test_check_read_timeout_sweep():
    """
    checkReadTimeout(now, timeout) enforces the read timeout from a coarse
    sweep, with the same exemptions as the internal timer.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    assert not proto.checkReadTimeout(clock.seconds() + 100, 30)  # idle
    channel = proto.sendRequest(request(b"POST"), receiver, bodyLength=None)
    clock.advance(10)
    assert not proto.checkReadTimeout(clock.seconds(), 30)
    proto.dataReceived(encode_get_body_chunk(100))
    clock.advance(100)
    assert not proto.checkReadTimeout(clock.seconds(), 30)  # container waits for us
    channel.write(b"x")
    clock.advance(29)
    assert not proto.checkReadTimeout(clock.seconds(), 30)
    clock.advance(1)
    assert proto.checkReadTimeout(clock.seconds(), 30)
    assert isinstance(receiver.last[1], AJPReadTimeout)
    assert transport.disconnected
    assert not proto.checkReadTimeout(clock.seconds() + 100, 30)


FLUSH = encode_send_body_chunk(b"")


def test_head_deadline_bounds_flushes_before_the_headers():
    """
    A container sending empty SEND_BODY_CHUNK flushes before SEND_HEADERS,
    each within the read timeout, gets AJPReadTimeout once the head
    deadline after the first flush has passed (the read timeout alone never
    fires: every flush is data).  The time before the first flush is the
    read timeout's only.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    clock.advance(25)
    assert not proto.checkReadTimeout(clock.seconds(), 30, 30)  # no reply yet
    proto.dataReceived(FLUSH)  # t=25: the reply begins
    for _ in range(5):
        clock.advance(5)
        assert not proto.checkReadTimeout(clock.seconds(), 30, 30)
        proto.dataReceived(FLUSH)
    clock.advance(4)  # t=54: 29 s after the first flush
    assert not proto.checkReadTimeout(clock.seconds(), 30, 30)
    assert not transport.disconnected
    clock.advance(1)
    assert proto.checkReadTimeout(clock.seconds(), 30, 30)
    error = receiver.last[1]
    assert isinstance(error, AJPReadTimeout) and "reply head" in str(error), error
    assert receiver.last[2:] == (False, True)
    assert transport.disconnected


def test_head_deadline_bounds_a_trickled_send_headers_packet():
    """
    A SEND_HEADERS packet trickled a byte at a time: timed from the first
    sweep that sees part of it held back.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    head = HEAD_200
    proto.dataReceived(head[:1])
    sent = 1
    failed = False
    while not failed:
        clock.advance(5)
        failed = proto.checkReadTimeout(clock.seconds(), 30, 30)
        if not failed:
            proto.dataReceived(head[sent:sent + 1])
            sent += 1
    assert clock.seconds() == 35, clock.seconds()  # first seen at t=5, due 30 s later
    assert isinstance(receiver.last[1], AJPReadTimeout)
    assert receiver.events == [("failed", receiver.last[1], False, True)]


def test_head_deadline_leaves_the_body_exchange_and_slow_starts_alone():
    """
    Not timed by the head deadline: the wait before the first reply byte,
    GET_BODY_CHUNK (also one a sweep saw in part) and the wait for our
    client's body, a head that comes whole within it, and the response body
    once SEND_HEADERS came.
    """
    proto, transport, clock = connect()
    receiver = Receiver()
    channel = proto.sendRequest(request(b"POST"), receiver, bodyLength=None)
    channel.write(b"x")
    proto.dataReceived(encode_get_body_chunk(100)[:3])  # part of a GET_BODY_CHUNK
    clock.advance(1)
    assert not proto.checkReadTimeout(clock.seconds(), 30, 30)  # seen in part
    proto.dataReceived(encode_get_body_chunk(100)[3:])  # answered at once
    for _ in range(2):  # (a read timeout of 60 s here, the head's 30 s)
        clock.advance(20)
        assert not proto.checkReadTimeout(clock.seconds(), 60, 30)
    proto.dataReceived(encode_get_body_chunk(100))
    clock.advance(100)
    assert not proto.checkReadTimeout(clock.seconds(), 30, 30)  # waiting for our client
    channel.finish()
    clock.advance(29)  # the container works on it, within the read timeout
    assert not proto.checkReadTimeout(clock.seconds(), 30, 30)
    proto.dataReceived(FLUSH)
    clock.advance(29)
    assert not proto.checkReadTimeout(clock.seconds(), 30, 30)
    proto.dataReceived(HEAD_200)
    for _ in range(10):  # a body trickled within the read timeout is fine
        clock.advance(20)
        assert not proto.checkReadTimeout(clock.seconds(), 30, 30)
        proto.dataReceived(encode_send_body_chunk(b"x"))
    proto.dataReceived(encode_end_response(True))
    assert [e[0] for e in receiver.events] == ["head"] + ["body"] * 10 + ["end"]
    # the next exchange on the connection starts without a deadline
    second = Receiver()
    proto.sendRequest(request(), second)
    clock.advance(29)
    assert not proto.checkReadTimeout(clock.seconds(), 30, 30)
    proto.dataReceived(HEAD_200 + encode_end_response(True))
    assert [e[0] for e in second.events] == ["head", "end"]


def test_head_deadline_with_the_protocols_own_timer():
    """
    readTimeout (the protocol's own timer) applies the head deadline too.
    """
    proto, transport, clock = connect(readTimeout=30)
    receiver = Receiver()
    proto.sendRequest(request(), receiver)
    clock.advance(20)
    proto.dataReceived(FLUSH)
    for _ in range(5):
        clock.advance(5)
        proto.dataReceived(FLUSH)
    assert not transport.disconnected  # t=45: 25 s after the first flush
    clock.advance(5)
    assert isinstance(receiver.last[1], AJPReadTimeout)
    assert transport.disconnected
