"""Real Tomcat 10 backends for integration tests (Debian package ``tomcat10``).

A :class:`TomcatInstance` builds a private ``CATALINA_BASE`` inside a directory the test
gives it (usually from ``tmp_path_factory``), on top of Debian's ``CATALINA_HOME``
(``/usr/share/tomcat10``), and runs it as one JVM in its own process group.  The system
``tomcat10`` service is never used (``scripts/install-test-deps`` installs the package
and keeps that service stopped and disabled).

What the generated ``conf/server.xml`` contains:

* ``<Server port="-1">``: no shutdown port; the JVM is stopped with signals.
* ``<Engine jvmRoute="...">``: session ids end with ``.<jvmRoute>``.  The same route is
  passed to the JVM as system property ``txmodcluster.test.jvmRoute`` so the test webapp
  can say which node answered (``X-Echo-Node`` response header, ``"node"`` JSON field).
* an HTTP/1.1 connector on ``127.0.0.1:<http_port>``;
* an AJP/1.3 connector on ``127.0.0.1:<ajp_port>`` with ``secretRequired="true"`` and
  ``secret`` when a secret is given (``secretRequired="false"`` otherwise) and the given
  ``packetSize`` (default 8192);
* both connectors use ``bindOnInit="false"``: they listen only once the webapp is
  deployed, so "port accepts" means "ready";
* one Host, ``autoDeploy="false"``, no stock webapps, jar/TLD scanning off, no session
  persistence across restarts.

Extra connector attributes can be given (``http_attributes``/``ajp_attributes``), e.g.
``{"tomcatAuthentication": "false"}`` or ``{"allowedRequestAttributesPattern": ".*"}``.

The echo webapp (``tests/support/webapp/echo``, JSP only; Tomcat compiles it with ecj)
is deployed at ``/echo``; :meth:`TomcatInstance.start` requests every page once, so
JSP compilation is done before the first test request.  Endpoints (every response
carries ``X-Echo-Node: <jvmRoute>``; JSON bodies have ``"node"``; all pages accept any
method, HEAD included):

``/echo/info.jsp``
    JSON echo of the request: ``method``, ``requestURI``, ``queryString``, ``protocol``,
    ``scheme``, ``isSecure``, ``serverName``, ``serverPort``, ``localAddr``,
    ``localPort``, ``remoteAddr``, ``remotePort``, ``remoteUser``, ``authType``,
    ``contextPath``, ``servletPath``, ``pathInfo``, ``contentType``, ``contentLength``,
    ``headers`` (list of ``[name, value]``, one per value, repeats kept), ``cookies``
    (list of ``[name, value]``), ``attributes`` (every request attribute, as strings:
    AJP ``req_attribute`` values, ``jakarta.servlet.request.*`` TLS facts...),
    ``jvmRouteAttribute`` (request attribute ``jvm_route`` if any; Tomcat 10 ignores the
    AJP jvm_route attribute so this is normally null), ``requestedSessionId``,
    ``requestedSessionIdValid``, ``sessionId`` (the session the request carries, never
    creates one), ``body`` (``{"bytes": n, "sha256": hex}`` of the request body,
    read only when Content-Length > 0 or Transfer-Encoding is present, else null).
``/echo/session.jsp``
    Finds or creates the session: ``existing``, ``created``, ``id`` (ends with
    ``.<jvmRoute>``), ``hits`` (per-session counter), ``requestedSessionId``.
    ``?invalidate=1`` invalidates the existing session instead.  The session cookie is
    ``JSESSIONID`` with ``Path=/echo``.
``/echo/stream.jsp?bytes=N``
    N bytes, byte at offset ``i`` is ``i % 251`` (:func:`stream_pattern`), written and
    flushed in ``chunk`` pieces (default 65536), ``delay_ms`` sleep between chunks,
    ``chunked=1`` omits Content-Length.  Header ``X-Echo-Bytes: N``.
``/echo/upload.jsp``
    Reads the whole body (Content-Length or chunked) and answers ``bytes``, ``sha256``,
    ``contentLength``, ``transferEncoding``, ``method``, ``contentType``.
    ``delay_ms`` before reading, ``read_delay_ms`` after each read of ``buffer`` bytes.
``/echo/status.jsp?code=N``
    Status N via ``setStatus`` (no error page); body ``status N\\n`` except for 1xx,
    204, 304 or ``empty=1``; ``location=URL`` sets Location; each ``header=Name:Value``
    adds a response header.
``/echo/redirect.jsp?to=URL&code=302``
    Redirect with ``Location`` exactly ``to`` (default ``/echo/info.jsp``).
``/echo/slow.jsp?ms=N``
    Sleeps N ms then answers ``{"node", "slept_ms", "elapsed_ms"}``; ``flush_first=1``
    sends the headers before sleeping (chunked body after the delay).
``/echo/trailers.jsp``
    Chunked answer ``hello world`` (two writes) with trailer fields
    (``setTrailerFields``): ``X-Echo-Node-Trailer: <jvmRoute>``, ``Grpc-Status: ?status``
    (default 0), ``X-Got``: the request's trailer fields as ``name=value`` joined with
    ``;`` (``-`` when none).
``/echo/headers.jsp``
    ``cookies`` (default 3) Set-Cookie headers ``c<i>=v<i>; Path=/echo`` (2nd adds
    ``; HttpOnly``, 3rd ``; Max-Age=60``), ``repeat`` (default 3) ``X-Echo-Multi:
    value-<i>`` headers, plus each ``header=Name:Value``; JSON ``set`` lists them.

Typical use (blocking; fine in a pytest fixture)::

    node = TomcatInstance(tmp_path / "node1", jvm_route="node1", ajp_secret="s3cr3t")
    node.start()            # ~2 s, see docs/testing-tomcat.md
    ... node.http_port, node.ajp_port, node.jvm_route ...
    node.kill()             # crash (SIGKILL); node.start() again restarts it
    node.stop()

Start the JVM from the main thread: the child gets ``PR_SET_PDEATHSIG`` so it dies with
the thread that started it (no stray JVMs when pytest is killed).
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

CATALINA_HOME = Path(os.environ.get("TXMC_CATALINA_HOME", "/usr/share/tomcat10"))
WEBAPP_DIR = Path(__file__).resolve().parent / "webapp" / "echo"
CONTEXT_PATH = "/echo"
LOOPBACK = "127.0.0.1"
ROUTE_PROPERTY = "txmodcluster.test.jvmRoute"

#: Every page of the echo app with the warm-up request start() sends to compile it
#: and the status that proves it works.
ECHO_PAGES = (
    ("info.jsp", "", 200),
    ("session.jsp", "?invalidate=1", 200),
    ("stream.jsp", "?bytes=1", 200),
    ("upload.jsp", "", 200),
    ("status.jsp", "?code=204", 204),
    ("redirect.jsp", "", 302),
    ("slow.jsp", "?ms=0", 200),
    ("headers.jsp", "", 200),
    ("trailers.jsp", "", 200),
)

# What catalina.sh adds on JDK 9+ (keeps Tomcat's leak-prevention code quiet).
_ADD_OPENS = (
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.rmi/sun.rmi.transport=ALL-UNNAMED",
)

# Log lines that mean a start has failed even though the JVM keeps running.
_START_FAILURES = (
    "Failed to start connector",
    "Address already in use",
    "failed to start so Tomcat is unable to start",
    "Failed to initialize connector",
)

_live: "weakref.WeakSet[TomcatInstance]" = weakref.WeakSet()

# Compiled echo JSPs, copied from the first instance that compiled them into later
# instances' work dirs (saves ~0.8 s per start).  Keyed by the webapp's file stamps;
# Jasper recompiles anyway if a class is older than its JSP.
_jsp_cache: dict[tuple, Path] = {}


class TomcatError(RuntimeError):
    """Tomcat is missing, failed to start, or misbehaved."""


def tomcat_installed(catalina_home: Path = CATALINA_HOME) -> bool:
    """True when Debian's tomcat10 files and a java binary are present."""
    return (catalina_home / "bin" / "bootstrap.jar").is_file() and find_java() is not None


def find_java() -> str | None:
    """The java binary: $JAVA_HOME/bin/java, else java on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java")


def free_loopback_ports(count: int = 1, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct TCP ports that are free on ``host`` right now.

    All sockets are held open until every port is chosen, so the ports are distinct;
    another process could still take one before it is used (unlikely: the kernel hands
    out ephemeral ports in a rotating order).
    """
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_loopback_port(host: str = LOOPBACK) -> int:
    """One free TCP port on ``host``."""
    return free_loopback_ports(1, host)[0]


def stream_pattern(length: int, offset: int = 0) -> bytes:
    """The bytes ``/echo/stream.jsp`` sends at ``[offset, offset + length)``."""
    start = offset % 251
    block = bytes(range(251))
    reps = (start + length) // 251 + 1
    return (block * reps)[start : start + length]


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True if a TCP connection to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


try:  # resolved in the parent: the child only makes one libc call between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # preexec_fn: runs in the child before exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


class TomcatInstance:
    """One Tomcat JVM with a private CATALINA_BASE under ``base_dir``."""

    def __init__(
        self,
        base_dir: os.PathLike[str] | str,
        *,
        jvm_route: str | None = "node1",
        http_port: int | None = None,
        ajp_port: int | None = None,
        ajp_secret: str | None = None,
        ajp_packet_size: int = 8192,
        http_attributes: Mapping[str, str] | None = None,
        ajp_attributes: Mapping[str, str] | None = None,
        heap_mb: int = 96,
        jvm_options: Sequence[str] = (),
        access_log: bool = False,
        quick_start: bool = True,
        catalina_home: os.PathLike[str] | str = CATALINA_HOME,
        webapp_dir: os.PathLike[str] | str = WEBAPP_DIR,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.catalina_home = Path(catalina_home)
        self.webapp_dir = Path(webapp_dir)
        if http_port is None or ajp_port is None:
            picked = free_loopback_ports(2)
            http_port = http_port if http_port is not None else picked[0]
            ajp_port = ajp_port if ajp_port is not None else picked[1]
        self._http_port = http_port
        self._ajp_port = ajp_port
        self._jvm_route = jvm_route
        self._ajp_secret = ajp_secret
        if not 8192 <= ajp_packet_size <= 65536:
            raise ValueError(f"packetSize must be in 8192..65536, not {ajp_packet_size}")
        self._ajp_packet_size = ajp_packet_size
        self._http_attributes = dict(http_attributes or {})
        self._ajp_attributes = dict(ajp_attributes or {})
        self.heap_mb = heap_mb
        self.jvm_options = tuple(jvm_options)
        self.access_log = access_log
        self.quick_start = quick_start
        self._process: subprocess.Popen[bytes] | None = None
        self._built = False
        self._log_offset = 0
        #: Seconds the last successful start() took (JVM launch to all pages compiled).
        self.last_start_seconds: float | None = None

    # -- properties ---------------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def http_port(self) -> int:
        return self._http_port

    @property
    def ajp_port(self) -> int:
        return self._ajp_port

    @property
    def jvm_route(self) -> str | None:
        return self._jvm_route

    @property
    def route(self) -> str | None:
        """Alias of :attr:`jvm_route`."""
        return self._jvm_route

    @property
    def ajp_secret(self) -> str | None:
        return self._ajp_secret

    @property
    def ajp_packet_size(self) -> int:
        return self._ajp_packet_size

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the JVM process is alive (whether or not it is ready)."""
        return self._process is not None and self._process.poll() is None

    @property
    def console_log(self) -> Path:
        """JVM stdout+stderr, where all of Tomcat's logging goes."""
        return self.base_dir / "logs" / "catalina.out"

    def http_url(self, path: str = "/echo/info.jsp") -> str:
        return f"http://{LOOPBACK}:{self._http_port}{path}"

    def __repr__(self) -> str:
        return (
            f"<TomcatInstance route={self._jvm_route!r} http={self._http_port} "
            f"ajp={self._ajp_port} pid={self.pid} base={str(self.base_dir)!r}>"
        )

    # -- building the CATALINA_BASE ------------------------------------------------

    def build(self) -> None:
        """(Re)write conf/ and the webapp under base_dir.  start() calls it once."""
        if not (self.catalina_home / "bin" / "bootstrap.jar").is_file():
            raise TomcatError(
                f"no Tomcat in {self.catalina_home}: run scripts/install-test-deps"
            )
        base = self.base_dir
        for sub in ("conf", "logs", "temp", "work", "webapps", "lib"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        # The global web.xml (default servlet, JSP servlet, MIME types) is used as is.
        shutil.copyfile(self.catalina_home / "etc" / "web.xml", base / "conf" / "web.xml")
        (base / "conf" / "server.xml").write_text(self._server_xml())
        (base / "conf" / "context.xml").write_text(_CONTEXT_XML)
        (base / "conf" / "catalina.properties").write_text(_CATALINA_PROPERTIES)
        (base / "conf" / "logging.properties").write_text(_LOGGING_PROPERTIES)
        target = base / "webapps" / CONTEXT_PATH.lstrip("/")
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(self.webapp_dir, target)  # copy2: keeps the JSPs' mtimes
        cached = _jsp_cache.get(self._webapp_key())
        work = self._jsp_work_dir()
        if cached is not None and cached.is_dir() and not work.exists():
            shutil.copytree(cached, work)
        self._built = True

    def _jsp_work_dir(self) -> Path:
        return self.base_dir / "work" / "Catalina" / "localhost" / CONTEXT_PATH.lstrip("/")

    def _webapp_key(self) -> tuple:
        stamps = []
        for path in sorted(self.webapp_dir.rglob("*")):
            st = path.stat()
            stamps.append((str(path.relative_to(self.webapp_dir)), st.st_mtime_ns, st.st_size))
        return (str(self.webapp_dir), tuple(stamps))

    def _remember_compiled_jsps(self) -> None:
        key = self._webapp_key()
        if key in _jsp_cache or not self._jsp_work_dir().is_dir():
            return
        cache = Path(tempfile.mkdtemp(prefix="txmc-jsp-cache-")) / "echo"
        shutil.copytree(self._jsp_work_dir(), cache)
        atexit.register(shutil.rmtree, cache.parent, True)
        _jsp_cache[key] = cache

    def _server_xml(self) -> str:
        route = (
            f" jvmRoute={quoteattr(self._jvm_route)}" if self._jvm_route is not None else ""
        )
        http = {
            "port": str(self._http_port),
            "address": LOOPBACK,
            "protocol": "HTTP/1.1",
            "bindOnInit": "false",
            "connectionTimeout": "20000",
        }
        http.update(self._http_attributes)
        ajp = {
            "port": str(self._ajp_port),
            "address": LOOPBACK,
            "protocol": "AJP/1.3",
            "bindOnInit": "false",
            "packetSize": str(self._ajp_packet_size),
        }
        if self._ajp_secret is not None:
            ajp["secretRequired"] = "true"
            ajp["secret"] = self._ajp_secret
        else:
            ajp["secretRequired"] = "false"
        ajp.update(self._ajp_attributes)
        valves = ""
        if self.access_log:
            valves = (
                '        <Valve className="org.apache.catalina.valves.AccessLogValve" '
                'directory="logs" prefix="access" suffix=".log" buffered="false" '
                'pattern="%h:%{remote}p %r %s %b %D ms route=%{jvmRoute}r"/>\n'
            )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            "<!-- Generated by tests/support/tomcat.py; do not edit. -->\n"
            '<Server port="-1" shutdown="SHUTDOWN">\n'
            '  <Listener className="org.apache.catalina.startup.VersionLoggerListener"'
            ' logArgs="false" logEnv="false" logProps="false"/>\n'
            '  <Service name="Catalina">\n'
            f"    <Connector{_attrs(http)}/>\n"
            f"    <Connector{_attrs(ajp)}/>\n"
            f'    <Engine name="Catalina" defaultHost="localhost"{route}>\n'
            '      <Host name="localhost" appBase="webapps" unpackWARs="false"'
            ' autoDeploy="false" deployOnStartup="true" backgroundProcessorDelay="-1">\n'
            f"{valves}"
            "      </Host>\n"
            "    </Engine>\n"
            "  </Service>\n"
            "</Server>\n"
        )

    def _command(self) -> list[str]:
        java = find_java()
        if java is None:
            raise TomcatError("no java binary (JAVA_HOME or PATH): run scripts/install-test-deps")
        home, base = self.catalina_home, self.base_dir
        classpath = f"{home}/bin/bootstrap.jar:{home}/bin/tomcat-juli.jar"
        return [
            java,
            f"-Xms{min(32, self.heap_mb)}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseSerialGC",
            # C1 only: starts ~30% faster; pass quick_start=False for throughput runs.
            *(["-XX:TieredStopAtLevel=1"] if self.quick_start else []),
            "-Xss512k",
            "-Djava.awt.headless=true",
            "-Djava.security.egd=file:/dev/./urandom",
            "-Djava.util.logging.manager=org.apache.juli.ClassLoaderLogManager",
            f"-Djava.util.logging.config.file={base}/conf/logging.properties",
            "-Djdk.tls.ephemeralDHKeySize=2048",
            "-Dorg.apache.catalina.security.SecurityListener.UMASK=0027",
            *_ADD_OPENS,
            f"-D{ROUTE_PROPERTY}={self._jvm_route or ''}",
            *self.jvm_options,
            "-classpath",
            classpath,
            f"-Dcatalina.home={home}",
            f"-Dcatalina.base={base}",
            f"-Djava.io.tmpdir={base}/temp",
            "org.apache.catalina.startup.Bootstrap",
            "start",
        ]

    # -- lifecycle ----------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Launch the JVM and block until both ports accept and every page answers.

        Raises :class:`TomcatError` (with the tail of catalina.out) if the JVM exits, a
        connector fails, or ``timeout`` seconds pass; the JVM is then killed.
        """
        if self.running:
            raise TomcatError(f"{self!r} is already running")
        if not self._built:
            self.build()
        log = self.console_log
        began = time.monotonic()
        with open(log, "ab") as console:
            console.write(f"--- txmodcluster test start {time.ctime()} ---\n".encode())
            console.flush()
            self._log_offset = console.tell()
            self._process = subprocess.Popen(
                self._command(),
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group, killed as a whole
                preexec_fn=_die_with_parent,
                env=self._env(),
            )
        _live.add(self)
        deadline = began + timeout
        try:
            self._wait_ports(deadline)
            self._warm_up(deadline)
        except BaseException:
            self.kill()
            raise
        self._remember_compiled_jsps()
        self.last_start_seconds = time.monotonic() - began

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Options meant for other JVMs must not leak into ours.
        for name in ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS", "CATALINA_OPTS"):
            env.pop(name, None)
        return env

    def _wait_ports(self, deadline: float) -> None:
        """Wait for Catalina's "Server startup" line of this launch, fail on connector
        errors, then require both ports to accept.  (Port probing alone is not enough:
        another process listening on one of our ports would look like success.)"""
        while True:
            log = self._log_since_launch()
            failed = [marker for marker in _START_FAILURES if marker in log]
            if failed:
                raise TomcatError(
                    f"Tomcat failed to start (http={self._http_port}, ajp={self._ajp_port}):"
                    f" {failed[0]}\n" + self.log_tail()
                )
            if "Server startup in" in log:
                break
            if not self.running:
                raise TomcatError(
                    f"Tomcat exited with status {self._process.returncode} during start\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise TomcatError("Tomcat did not finish starting in time\n" + self.log_tail())
            time.sleep(0.05)
        refused = [p for p in (self._http_port, self._ajp_port) if not port_accepts(p)]
        if refused:
            raise TomcatError(f"Tomcat started but ports {refused} refuse\n" + self.log_tail())

    def _log_since_launch(self) -> str:
        try:
            with open(self.console_log, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _warm_up(self, deadline: float) -> None:
        """Request every echo page once: compiles the JSPs, proves the app is deployed."""
        for page, query, expected in ECHO_PAGES:
            remaining = max(1.0, deadline - time.monotonic())
            conn = http.client.HTTPConnection(LOOPBACK, self._http_port, timeout=remaining)
            try:
                conn.request("GET", f"{CONTEXT_PATH}/{page}{query}")
                resp = conn.getresponse()
                body = resp.read()
            except OSError as e:
                raise TomcatError(f"warm-up GET {page} failed: {e!r}\n" + self.log_tail()) from e
            finally:
                conn.close()
            if resp.status != expected:
                raise TomcatError(
                    f"warm-up GET {page} answered {resp.status}: {body[:2000]!r}\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise TomcatError("Tomcat warm-up exceeded the start timeout\n" + self.log_tail())

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: Tomcat's shutdown hook), SIGKILL the group if slow.

        Idempotent; returns once the process is reaped and both ports refuse.
        """
        proc = self._process
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._reap()

    def kill(self) -> None:
        """Crash the node: SIGKILL to the whole process group, no shutdown hook."""
        if self._process is None:
            return
        self._reap()

    def _reap(self) -> None:
        proc = self._process
        assert proc is not None
        # Always SIGKILL the group, even if the leader exited: nothing may survive.
        self._signal_group(signal.SIGKILL)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired as e:  # pragma: no cover - kernel trouble
            raise TomcatError(f"Tomcat pid {proc.pid} survived SIGKILL") from e
        self._process = None
        _live.discard(self)

    def _signal_group(self, sig: int) -> None:
        proc = self._process
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)  # start_new_session made the JVM its group leader
        except ProcessLookupError:
            pass

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    # -- diagnostics --------------------------------------------------------------

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of catalina.out (JVM output and Tomcat's logging)."""
        try:
            with open(self.console_log, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                data = f.read()
        except OSError:
            return "(no catalina.out)"
        text = data.decode("utf-8", "replace").splitlines()[-lines:]
        return "--- catalina.out tail ---\n" + "\n".join(text)


def _attrs(values: Mapping[str, str]) -> str:
    return "".join(f" {k}={quoteattr(str(v))}" for k, v in values.items())


def stop_all(instances: Iterable[TomcatInstance] | None = None) -> None:
    """Stop the given instances (default: every one still running in this process)."""
    for inst in list(instances if instances is not None else _live):
        try:
            inst.stop(timeout=5.0)
        except Exception:  # noqa: BLE001 - best effort at teardown
            inst.kill()


atexit.register(stop_all)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_CONTEXT_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by tests/support/tomcat.py. Defaults for every webapp. -->
<Context reloadable="false">
  <!-- No jar or TLD scanning beyond the webapp itself (it has no jars). -->
  <JarScanner scanClassPath="false" scanManifest="false" scanAllDirectories="false"/>
  <!-- No session persistence across stop/start: a restarted node has no sessions. -->
  <Manager pathname=""/>
</Context>
"""

_CATALINA_PROPERTIES = """\
# Generated by tests/support/tomcat.py.
package.access=sun.,org.apache.catalina.,org.apache.coyote.,org.apache.jasper.,org.apache.tomcat.
package.definition=sun.,java.,org.apache.catalina.,org.apache.coyote.,org.apache.jasper.,org.apache.naming.,org.apache.tomcat.
common.loader="${catalina.base}/lib","${catalina.base}/lib/*.jar","${catalina.home}/lib","${catalina.home}/lib/*.jar"
server.loader=
shared.loader=
tomcat.util.scan.StandardJarScanFilter.jarsToSkip=*.jar
tomcat.util.scan.StandardJarScanFilter.jarsToScan=
tomcat.util.buf.StringCache.byte.enabled=true
"""

_LOGGING_PROPERTIES = """\
# Generated by tests/support/tomcat.py: everything to the console (= logs/catalina.out).
handlers = java.util.logging.ConsoleHandler
.handlers = java.util.logging.ConsoleHandler
.level = INFO
java.util.logging.ConsoleHandler.level = ALL
java.util.logging.ConsoleHandler.formatter = org.apache.juli.OneLineFormatter
java.util.logging.ConsoleHandler.encoding = UTF-8
"""
