#!/usr/bin/env python3
"""
HTTP/2 to clients: ``h2load -c10 -m10`` against httpd (mod_http2 + mod_ssl +
mod_proxy_balancer) and txmodcluster (``ssl:`` listener, ``[proxy] http2``),
both in front of the same two private nginx backends, same run, alternating.

    .venv/bin/python bench/h2_bench.py [--duration 5] [--runs 3] [--path small.txt]

Needs what bench/install installs (nginx, apache2) plus ``h2load`` (Debian
``nghttp2-client``) and ``openssl`` (a throw-away self-signed certificate).
It reuses bench/run.py's private nginx, httpd and twistd instances (nothing
from /etc, free 127.0.0.1 ports).  Prints one row per target: median req/s of
the runs, and txmodcluster's ratio to httpd.  Kept apart from bench/run.py
(which drives wrk over plain HTTP/1.1) because the load generator, TLS and the
httpd modules differ.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py)
from run import LOOPBACK, Httpd, McmpClient, Nginx, Txmc, free_ports, log  # noqa: E402

H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"


class H2Httpd(Httpd):
    """bench/run.py's httpd plus a TLS virtual host speaking h2 (mod_http2)."""

    def __init__(self, tmp: Path, backends, cert: Path, key: Path) -> None:
        super().__init__(tmp, backends, None)
        self.tls_port = free_ports(1)[0]
        # not self.cert: bench/run.py's Httpd adds its own mod_ssl listener for that
        self.h2_cert, self.h2_key = cert, key

    def conf(self) -> str:
        mods = ["ssl", "http2", "socache_shmcb"]
        load = "\n".join(f"LoadModule {m}_module {run.HTTPD_MODULES}/mod_{m}.so" for m in mods)
        return super().conf() + f"""
{load}
Listen {LOOPBACK}:{self.tls_port}
SSLSessionCache "shmcb:{self.dir}/ssl_scache(512000)"
<VirtualHost {LOOPBACK}:{self.tls_port}>
    SSLEngine on
    SSLCertificateFile "{self.h2_cert}"
    SSLCertificateKeyFile "{self.h2_key}"
    Protocols h2 http/1.1
    ProxyPreserveHost On
    ProxyPass "/" "balancer://bench/"
</VirtualHost>
"""


def make_cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def h2load(url: str, duration: float, clients: int, streams: int) -> float:
    cmd = [H2LOAD, "-c", str(clients), "-m", str(streams), "-t", "1", "-D", f"{duration:g}",
           "--warm-up-time", "1", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"finished in [^,]+, ([\d.]+) req/s", out)
    failed = re.search(r"requests: .*?(\d+) failed", out)
    if m is None:
        raise RuntimeError(f"h2load output not understood:\n{out[-800:]}")
    if failed and int(failed.group(1)):
        log(f"warning: {failed.group(1)} failed requests against {url}")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--path", default="small.txt", help="small.txt (100 B) or large.bin")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also run the txmodcluster code in DIR (e.g. a `git archive` of an "
                         "older commit), same run, alternating: before/after ratios")
    args = ap.parse_args()
    if not Path(H2LOAD).exists():
        print("h2load missing: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="h2bench-") as t:
        tmp = Path(t)
        cert, key = make_cert(tmp)
        www = run.make_docroot(tmp)
        nginx = [Nginx(tmp, "nginx1", www), Nginx(tmp, "nginx2", www)]
        httpd = txmc = None
        extra: list = []
        try:
            for n in nginx:
                n.start()
            httpd = H2Httpd(tmp, nginx, cert, key)
            httpd.start()
            run.wait_port(httpd.tls_port, httpd.proc, 15, "httpd (TLS)", httpd.dir / "error.log")
            txmc = Txmc(tmp)
            tls_port = free_ports(1)[0]
            txmc.proxy_opts["listen"] = [
                f"ssl:{tls_port}:interface={LOOPBACK}:privateKey={key}:certKey={cert}"]
            txmc.pport = tls_port
            txmc.start()
            client = McmpClient(txmc.mport)
            for i, n in enumerate(nginx, 1):
                run.register_node(client, f"nginx{i}", LOOPBACK, n.port, "http")
            client.close()
            targets = [("httpd mod_http2 + mod_proxy_balancer", httpd.tls_port),
                       ("txmodcluster http2", tls_port)]
            if args.baseline:
                base_txmc = Txmc(tmp, "txmc-baseline")
                base_port = free_ports(1)[0]
                base_txmc.proxy_opts["listen"] = [
                    f"ssl:{base_port}:interface={LOOPBACK}:privateKey={key}:certKey={cert}"]
                base_txmc.pport = base_port
                repo, run.REPO = run.REPO, Path(args.baseline).resolve()
                try:
                    base_txmc.start()  # (its PYTHONPATH is run.REPO)
                finally:
                    run.REPO = repo
                extra.append(base_txmc)
                client = McmpClient(base_txmc.mport)
                for i, n in enumerate(nginx, 1):
                    run.register_node(client, f"nginx{i}", LOOPBACK, n.port, "http")
                client.close()
                targets.append(("txmodcluster http2 (baseline)", base_port))
            results: dict[str, list[float]] = {name: [] for name, _ in targets}
            for _name, port in targets:  # warm-up
                h2load(f"https://{LOOPBACK}:{port}/{args.path}", 1, args.clients, args.streams)
            for i in range(args.runs):
                for name, port in targets:
                    rps = h2load(f"https://{LOOPBACK}:{port}/{args.path}", args.duration,
                                 args.clients, args.streams)
                    results[name].append(rps)
                    log(f"run {i + 1}: {name}: {rps:.0f} req/s")
            print(f"\n== HTTP/2 (h2load -c{args.clients} -m{args.streams}, /{args.path}, "
                  f"{args.duration:g} s x {args.runs}, median)")
            base = statistics.median(results[targets[0][0]])
            for name, _ in targets:
                med = statistics.median(results[name])
                print(f"{name:<40} {med:>9.0f} req/s  x httpd {med / base:.2f}  "
                      f"runs {', '.join(f'{r:.0f}' for r in results[name])}")
        finally:
            for p in (*extra, txmc, httpd, *nginx):
                if p is not None:
                    run.stop(p.proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
