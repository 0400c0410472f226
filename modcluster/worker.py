"""
Entry point of a data-plane worker process: C{python -m modcluster.worker}.

Started by L{modcluster.proxy.workers.WorkerPool} with the channel on stdin
(from the control process) and file descriptor 3 (to it), and the listening
sockets after that.  Not meant to be run by hand.
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    from typing import cast

    from twisted.internet import reactor
    from twisted.internet.interfaces import IReactorFromThreads
    from twisted.internet.stdio import StandardIO
    from twisted.logger import ILogObserver, Logger, globalLogBeginner

    from modcluster.proxy.workers import CHANNEL_FD, ControlChannel, log_forwarder

    state: dict = {}

    def deliver(message: tuple) -> None:
        service = state.get("service")
        if service is not None:
            service.deliver(message)
        elif message[0] == "init":
            from modcluster.tap import build_worker

            _, config, index, listeners = message
            service = build_worker(config, reactor, listeners, channel.send)
            state["service"] = service
            service.startService()
            reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
            if config.proxy.fast_event_loop:
                from modcluster.tap import _freeze_heap

                _freeze_heap()
        elif message[0] == "stop":
            reactor.stop()

    def lost() -> None:
        if reactor.running:
            reactor.stop()

    def guarded(message: tuple) -> None:
        try:
            deliver(message)
        except Exception:
            log.failure("worker: cannot handle {kind!r} from the control process",
                        kind=message[0] if isinstance(message, tuple) and message else None)

    log = Logger(namespace="modcluster.worker")
    channel = ControlChannel(guarded, lost)
    # A plain callable taking the event is an observer (twisted.logger's docs).
    globalLogBeginner.beginLoggingTo([cast(ILogObserver, log_forwarder(channel.send))],
                                     redirectStandardIO=False)
    # mypy reads twisted.internet.stdio's Windows branch; the POSIX StandardIO takes these.
    StandardIO(channel, stdin=0, stdout=CHANNEL_FD, reactor=reactor)  # type: ignore[call-arg]
    # Ctrl-C reaches the whole process group: the control process decides when
    # workers stop (it sends "stop", or its end closes our stdin).  SIGTERM
    # stops this worker cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGHUP (reload) and SIGUSR1 (reopen logs) are the control process's business;
    # sent to the whole process group they must not end a worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    from_threads = IReactorFromThreads(reactor)
    signal.signal(signal.SIGTERM,
                  lambda *_: from_threads.callFromThread(reactor.stop))
    # IReactorCore.run is declared without the argument every reactor's run takes.
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]
    return 0


if __name__ == "__main__":
    sys.exit(main())
