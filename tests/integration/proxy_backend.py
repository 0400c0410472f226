"""
A tiny HTTP/1.1 node for integration tests, run as a subprocess so a test can
kill it mid-load: ``python proxy_backend.py ROUTE``.  It listens on
127.0.0.1 (ephemeral port), prints ``PORT <n>`` and answers every request
with ``<route> <path>`` (keep-alive, Content-Length).  ``/slow`` answers after
50 ms.
"""

import sys

import httptools
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

ROUTE = sys.argv[1].encode()


class Node(Protocol):
    def connectionMade(self):
        self.parser = httptools.HttpRequestParser(self)
        self.transport.setTcpNoDelay(True)
        self.url = b""

    def dataReceived(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.loseConnection()

    def on_url(self, url):
        self.url += url

    def on_message_complete(self):
        body = ROUTE + b" " + self.url
        self.url = b""
        response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body))
        if body.endswith(b"/slow"):
            reactor.callLater(0.05, self.transport.write, response)
        else:
            self.transport.write(response)


port = reactor.listenTCP(0, Factory.forProtocol(Node), interface="127.0.0.1")
sys.stdout.write("PORT %d\n" % port.getHost().port)
sys.stdout.flush()
reactor.run()
