"""
MCMPResource.render with the three kinds of handler result: a reply, a
Deferred that has already fired (written at once, as a plain reply) and one
that fires later (NOT_DONE_YET, written when it fires).
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import capturedLogs
from twisted.web import server
from twisted.web.test.requesthelper import DummyRequest

from modcluster.mcmp.handler import Reply
from modcluster.mcmp.resource import MCMPResource

REPLY = Reply(200, ((b"content-type", b"text/plain"),), b"Type=STATUS-RSP&State=OK\n")


class Handler:
    def __init__(self, result):
        self.result = result

    def handle(self, method, uri, body, accept, identities, peer=None):
        return self.result


def _request():
    request = DummyRequest([b""])
    request.method = b"STATUS"
    request.uri = b"/"
    request.content = None
    return request


def test_plain_reply():
    request = _request()
    assert MCMPResource(Handler(REPLY)).render(request) == REPLY.body
    assert request.responseCode == 200
    assert request.responseHeaders.getRawHeaders(b"content-length") == [b"25"]


def test_fired_deferred_is_written_at_once():
    request = _request()
    assert MCMPResource(Handler(succeed(REPLY))).render(request) == REPLY.body
    assert request.responseCode == 200
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"text/plain"]
    assert request.finished == 0  # twisted.web writes the returned body and finishes


def test_later_deferred_is_written_when_it_fires():
    d = Deferred()
    request = _request()
    assert MCMPResource(Handler(d)).render(request) is server.NOT_DONE_YET
    assert request.written == []
    d.callback(REPLY)
    assert b"".join(request.written) == REPLY.body
    assert request.finished == 1


def test_failed_deferred_is_logged_not_written():
    request = _request()
    with capturedLogs() as events:
        result = MCMPResource(Handler(fail(RuntimeError("boom")))).render(request)
    assert result is server.NOT_DONE_YET
    assert request.written == []
    assert any(e.get("log_failure") is not None for e in events)
