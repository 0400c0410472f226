"""
Connection: close requests in bursts on a listener shared by worker processes
(proxy.workers = 2): both accept from one queue (the batch sized by its
length, TCP_INFO) and answer with send_last; every client gets its whole
answer and the end of the stream.
"""

from twisted.internet import defer, threads

from tests.integration.test_close_answers import _close_get, _exchange, _length, _split
from tests.integration.test_worker_processes import cluster_test, until


@cluster_test()
async def test_bursts_of_close_requests_on_a_shared_listener(c):
    await c.node("nA")
    await c.node("nB")
    for burst in range(5):
        work = [threads.deferToThread(_exchange, c.pport,
                                      _close_get(f"/app/echo?b={burst}&i={i}"))
                for i in range(40)]
        work += [threads.deferToThread(_exchange, c.pport,
                                       _close_get(f"/app/download?bytes={50_000 * (i + 1)}"),
                                       wait=0.05)
                 for i in range(4)]
        for data, _took, how in await defer.gatherResults(work):
            head, body = _split(data)
            assert head.startswith(b"HTTP/1.1 200 "), data[:200]
            assert _length(head) == len(body) and how == "eof"
    await until(lambda: sum(w["requests"] for w in c.pool.status()) == 5 * 44,
                what="counters")
    assert all(w["requests"] for w in c.pool.status())  # both workers answered
