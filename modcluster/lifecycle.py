"""
The balancer's top service: how it starts, reloads and stops.

 - start-up failures (a port in use) become one line on stderr and in the
   log, exit status 1, and no pidfile left behind;
 - C{SIGHUP} re-reads the configuration file and hands the new configuration
   to one path, L{BalancerService.apply_config}: the parts that can change
   live are applied by the hooks the services registered with
   L{BalancerService.on_reload}, every other changed key is named in one log
   line as needing a restart, and a file that does not load (or that
   L{modcluster.preflight} refuses) is logged and the running configuration
   kept;
 - C{SIGUSR1} reopens the log file twistd writes (C{--logfile}) and calls the
   reopen hooks registered with L{BalancerService.on_reopen} (files we own);
 - stopping (C{SIGTERM}) first stops accepting on the proxy listeners, lets
   requests in flight finish for up to C{proxy.drain_timeout} seconds
   (idle keep-alive connections are closed), then stops everything else.

To make a new configuration key live, register a hook where the service using
it is built (modcluster/tap.py)::

    top.on_reload(("proxy.my_key",), lambda new: thing.set_my_key(new.proxy.my_key))

Keys are dotted names as in the file; C{"section.*"} matches every key of a
section.  A hook runs once per reload when any of its keys changed, with the
whole new L{Config}.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LogLevelFilterPredicate, globalLogPublisher

from modcluster.config import Config, ConfigError, iter_fields, load_config

if TYPE_CHECKING:
    from modcluster.cluster.registry import Registry
    from modcluster.handover import ListenerBook
    from modcluster.mcmp.handler import MCMPHandler
    from modcluster.metrics import Metrics
    from modcluster.services.persistence import StateStore

__all__ = ["BalancerService", "changed_keys", "reopen_twistd_log"]

log = Logger(namespace="modcluster.lifecycle")

#: Seconds between checks while draining.
DRAIN_POLL = 0.1


def _value(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def changed_keys(old: Config, new: Config) -> list[str]:
    """The dotted keys whose values differ between C{old} and C{new}, in file order."""
    return [key for key, _, _ in iter_fields() if _value(old, key) != _value(new, key)]


def reopen_twistd_log() -> int:
    """
    Reopen the log file(s) twistd writes (C{--logfile}): after an external
    rotation (logrotate moved the file) the log goes to a new file at the
    configured path.  Returns how many files were reopened.
    """
    count = 0
    # twistd's observer is a FileLogObserver over a twisted.python.logfile.LogFile.
    for observer in list(getattr(globalLogPublisher, "_observers", ())):
        target = getattr(getattr(observer, "_observer", observer), "_outFile", None)
        if target is not None and hasattr(target, "reopen") and hasattr(target, "path"):
            target.reopen()
            count += 1
    return count


class BalancerService(MultiService):
    """
    The root of the balancer's services (built by L{modcluster.tap.build}).

    @ivar config: the configuration in force.
    @ivar config_path: the file SIGHUP re-reads (C{None}: built-in defaults,
        nothing to re-read).
    @ivar drainers: C{callable() -> int} per data plane: closes idle client
        connections and says how many are still busy.
    @ivar stop_accepting: C{callable() -> Deferred | None} run first on stop.
    @ivar after_drain: C{callable()} run once the drain is over.
    @ivar when_listening: C{callable()} run at the end of L{startService},
        every listener listening (the registry restored before it): the
        forwarding-loop check of the registered nodes.
    @ivar registry: the cluster model (L{modcluster.cluster.registry.Registry}).
    @ivar handler: the MCMP handler (L{modcluster.mcmp.handler.MCMPHandler}).
    @ivar metrics: the Prometheus view (L{modcluster.metrics.Metrics}).
    @ivar management_tls: the C{SwappableServerTLS} of each TLS management or
        console listener (a reload swaps their certificates).
    @ivar state_store: the L{modcluster.services.persistence.StateStore}
        (C{manager.persist}), or C{None}; L{startService} restores the saved
        state through it unless L{taken_over}.
    @ivar listener_book: the handover's L{modcluster.handover.ListenerBook}
        (C{manager.handover_socket}), or C{None}.
    @ivar taken_over: C{True} once the registry was restored from a
        predecessor's handover snapshot (fresher than the state file, which
        is then not read).
    """

    def __init__(self, config: Config, reactor, *, registry: Optional[Registry] = None,
                 handler: Optional[MCMPHandler] = None,
                 metrics: Optional[Metrics] = None) -> None:
        super().__init__()
        self.registry = registry
        self.handler = handler
        self.metrics = metrics
        self.management_tls: list[Any] = []
        self.state_store: Optional[StateStore] = None
        self.listener_book: Optional[ListenerBook] = None
        self.taken_over = False
        self._state_restored = False
        self.config = config
        self.started_config = config
        self.reactor = reactor
        self.config_path: Optional[str] = None
        self.twistd_options: Optional[dict] = None
        self.signals = False
        self.drainers: list[Callable[[], int]] = []
        self.stop_accepting: list[Callable[[], Any]] = []
        self.after_drain: list[Callable[[], Any]] = []
        #: C{callable()} run once the listeners are listening (L{startService})
        self.when_listening: list[Callable[[], Any]] = []
        self._live: list[tuple[tuple[str, ...], Callable[[Config], None]]] = []
        #: C{apply(new_config)} run on every reload, changed keys or not (files
        #: named by unchanged keys may have changed: certificates)
        self.every_reload: list[Callable[[Config], None]] = []
        self._reopen: list[Callable[[], None]] = []
        self._previous_handlers: dict[int, Any] = {}
        self._log_predicate: Optional[LogLevelFilterPredicate] = None
        self.on_reload(("manager.log_level",), self._set_log_level)

    # -- reload -------------------------------------------------------------

    def on_reload(self, keys: Iterable[str], apply: Callable[[Config], None]) -> None:
        """
        Make C{keys} live: C{apply(new_config)} runs when one of them changed.
        """
        self._live.append((tuple(keys), apply))

    def on_reopen(self, reopen: Callable[[], None]) -> None:
        """C{reopen()} runs on SIGUSR1 (a log file we own)."""
        self._reopen.append(reopen)

    def live_keys(self) -> list[str]:
        """Every key a reload applies (the rest need a restart)."""
        return [key for key, _, _ in iter_fields() if self._hooks_for(key)]

    def _hooks_for(self, key: str) -> list[Callable[[Config], None]]:
        return [apply for patterns, apply in self._live
                if any(fnmatch.fnmatchcase(key, p) for p in patterns)]

    def apply_config(self, new: Config) -> tuple[list[str], list[str]]:
        """
        Apply C{new}: run the hooks of the keys that changed since the last
        reload and log one line.  Returns C{(applied keys, keys needing a
        restart)}; the latter are compared with the configuration the
        process started with.
        """
        changed = changed_keys(self.config, new)
        applied: list[str] = []
        hooks: list[Callable[[Config], None]] = []
        for key in changed:
            found = self._hooks_for(key)
            if found:
                applied.append(key)
                hooks.extend(h for h in found if all(h is not x for x in hooks))
        restart = [key for key in changed_keys(self.started_config, new)
                   if not self._hooks_for(key)]
        failed = []
        for hook in hooks + self.every_reload:
            try:
                hook(new)
            except Exception:
                log.failure("reload: applying a new setting failed")
                failed.append(getattr(hook, "__name__", repr(hook)))
        self.config = new
        log.info("reload: applied {applied}; {restart}",
                 applied=", ".join(applied) or "no change",
                 restart=(f"needs a restart to take effect: {', '.join(restart)}"
                          if restart else "nothing needs a restart"))
        return applied, restart

    def reload(self) -> bool:
        """
        Re-read C{config_path} and apply it; keep the running configuration
        (with one error line) when the file does not load or would not start.
        """
        if self.config_path is None:
            log.warn("reload: running on the built-in defaults (no --config): nothing to "
                     "re-read")
            return False
        from modcluster.preflight import problems

        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload refused, keeping the running configuration: {error}", error=e)
            return False
        found = problems(new)
        if found:
            log.error("reload refused, keeping the running configuration: {path}: {problems}",
                      path=self.config_path, problems="; ".join(found))
            return False
        self.apply_config(new)
        return True

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen twistd's log file and ours."""
        count = reopen_twistd_log()
        for reopen in self._reopen:
            try:
                reopen()
                count += 1
            except Exception:
                log.failure("reopening a log file failed")
        log.info("log files reopened ({count})", count=count)

    # -- log level ----------------------------------------------------------

    def _filter_logs(self) -> None:
        """Put a level filter in front of the log observers twistd installed."""
        from twisted.logger import FilteringLogObserver, LogLevel

        predicate = self._log_predicate = LogLevelFilterPredicate(
            defaultLogLevel=LogLevel.levelWithName(self.config.manager.log_level))
        for observer in list(getattr(globalLogPublisher, "_observers", ())):
            globalLogPublisher.removeObserver(observer)
            globalLogPublisher.addObserver(FilteringLogObserver(observer, [predicate]))

    def _set_log_level(self, new: Config) -> None:
        if self._log_predicate is not None:
            from twisted.logger import LogLevel

            self._log_predicate.setLogLevelForNamespace(  # "": the default level
                "", LogLevel.levelWithName(new.manager.log_level))

    # -- signals ------------------------------------------------------------

    def _install_signals(self) -> None:
        def on(signum: int, action: Callable[[], Any]) -> None:
            def handler(_signum, _frame) -> None:
                self.reactor.callFromThread(action)

            self._previous_handlers[signum] = signal.signal(signum, handler)

        on(signal.SIGHUP, self.reload)
        on(signal.SIGUSR1, self.reopen_logs)

    def _restore_signals(self) -> None:
        for signum, previous in self._previous_handlers.items():
            try:
                signal.signal(signum, previous)
            except (TypeError, ValueError):
                pass
        self._previous_handlers.clear()

    # -- start --------------------------------------------------------------

    def _listen_synchronously(self) -> None:
        """
        Every listener raises its bind error at start (as C{strports.service}
        does) instead of logging it later and running without the port.
        """
        from twisted.application.internet import StreamServerEndpointService

        pending = list(self)
        while pending:
            service = pending.pop()
            if isinstance(service, StreamServerEndpointService):
                service._raiseSynchronously = True
            elif isinstance(service, MultiService):
                pending.extend(service)

    def privilegedStartService(self) -> None:
        if self.signals:
            # Before the first listener binds: from then on a supervisor or a
            # test may send SIGHUP/SIGUSR1 (their default action would end us).
            self._install_signals()
        self._listen_synchronously()
        book = self.listener_book
        if book is not None:  # record the listeners for a handover (handover.py)
            book.install()
        try:
            super().privilegedStartService()
        except (CannotListenError, OSError) as e:
            self._cannot_start(e)

    def restore_state(self) -> None:
        """
        Load the saved state (C{manager.persist}) into the registry, before
        any child service starts; skipped when the registrations were taken
        over from a predecessor (L{taken_over}); once per process (a service
        started again keeps its registry).
        """
        self._state_restored = True
        if self.state_store is not None and not self.taken_over:
            self.state_store.restore()

    def startService(self) -> None:
        if not self._state_restored:
            self.restore_state()
        try:
            super().startService()
        except (CannotListenError, OSError) as e:
            self._cannot_start(e)
        finally:
            book = self.listener_book
            if book is not None:
                book.uninstall()
        for run in self.when_listening:
            try:
                run()
            except Exception:
                log.failure("start: a check after the listeners started failed")
        if self.signals:
            if not self._previous_handlers:  # started without privilegedStartService
                self._install_signals()
            self._filter_logs()

    def _listener_key(self, error: BaseException) -> str:
        from modcluster.preflight import split_endpoint

        if not isinstance(error, CannotListenError):
            return ""
        for section, values in (("manager.listen", self.config.manager.listen),
                                ("proxy.listen", self.config.proxy.listen),
                                ("console.listen", self.config.console.listen)):
            for i, description in enumerate(values):
                kind, positional, kw = split_endpoint(description)
                port = kw.get("port", positional[0] if positional else "")
                if port == str(error.port) and kw.get("interface", "") == (error.interface or ""):
                    return f"{section}[{i}]: "
        return ""

    def _cannot_start(self, error: BaseException) -> None:
        if isinstance(error, CannotListenError):
            reason = f"cannot listen on {error.interface or '*'}:{error.port}: " + (
                getattr(error.socketError, "strerror", None) or str(error.socketError))
        else:
            reason = getattr(error, "strerror", None) or str(error)
        line = f"{self.config_path or '(built-in defaults)'}: {self._listener_key(error)}{reason}"
        log.critical("cannot start: {line}", line=line)
        options = self.twistd_options or {}
        stream = sys.__stderr__
        if stream is not None:
            stream.write(line + "\n")
            stream.flush()
        pipe = options.get("statusPipe") if hasattr(options, "get") else None
        if pipe is not None:  # twistd's daemonizing parent prints it
            try:
                os.write(pipe, b"1 " + line.encode("ascii", "backslashreplace")[:96])
                os.close(pipe)
            except OSError:
                pass
            options["statusPipe"] = None
        pidfile = options.get("pidfile") if hasattr(options, "get") else None
        if pidfile:
            try:
                os.unlink(pidfile)
            except OSError:
                pass
        raise SystemExit(1)

    # -- stop ---------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self):
        """
        Stop accepting, drain the requests in flight (up to
        C{proxy.drain_timeout}), then stop every service.
        """
        self._restore_signals()
        timeout = getattr(self.config.proxy, "drain_timeout", 0.0)
        if self.drainers and timeout > 0:
            for stop in self.stop_accepting:
                try:
                    yield stop()
                except Exception:
                    log.failure("drain: stop accepting failed")
            busy = self._drain_once()
            deadline = self.reactor.seconds() + timeout
            if busy:
                log.info("draining {busy} client connections (up to {timeout} s)",
                         busy=busy, timeout=timeout)
            while busy and self.reactor.seconds() < deadline:
                yield task.deferLater(self.reactor, DRAIN_POLL)
                busy = self._drain_once()
            if busy:
                log.warn("drain: {busy} client connections still busy after {timeout} s; "
                         "closing them", busy=busy, timeout=timeout)
            for done in self.after_drain:
                try:
                    done()
                except Exception:
                    log.failure("drain: finishing failed")
            del self.after_drain[:]
        yield super().stopService()

    def _drain_once(self) -> int:
        busy = 0
        for drain in self.drainers:
            try:
                busy += drain()
            except Exception:
                log.failure("drain failed")
        return busy
