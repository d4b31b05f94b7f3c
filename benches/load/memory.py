#!/usr/bin/env python3
"""Memory on loopback: resident memory of tidegate, HAProxy and nginx as reverse proxies in front of one nginx backend.

One worker per proxy (tidegate `workers: 1`, HAProxy `nbthread 1`, nginx `worker_processes 1`).
Every phase below runs on a freshly started proxy, one proxy at a time, so that memory one phase
left behind does not show in the next. Per proxy and round:

  RSS idle        VmRSS after start and a readiness probe, no connections open
  RSS 0 conns     VmRSS after a 2 s warm-up load (50 connections), every connection closed: the baseline
  RSS N conns     VmRSS with N idle keep-alive client connections open, each having sent one GET and
                  read its response; opened cumulatively (1000, then 3000 more, ...), read 1 s after the
                  last one opened. KB/conn = (RSS N conns - RSS 0 conns) / N
  RSS load peak   a new process: peak VmRSS sampled every 0.1 s during wrk -t1 -c1000 -d10s (without
                  wrk: an asyncio client whose 1000 connections each send requests in a loop for 10 s)

nginx runs as a master and one worker, and its column is master + worker; the worker alone is in
the last column. tidegate and HAProxy are one process each. With --rounds > 1 the table shows medians.

Limits: this script raises its RLIMIT_NOFILE soft limit to the hard limit, and the proxies inherit
it. tidegate gets `limits.max_connections` and HAProxy `maxconn` (and `ulimit-n`) of the largest N
plus 256, nginx `worker_connections` of the largest N plus 2000 (load: client + upstream) and
`worker_rlimit_nofile`. Idle timeouts are 300 s everywhere (tidegate: `timeouts.request_header`).

The backend and the proxies' configs come from compare.py (same directory). The script installs
nothing: it checks for its tools and says what is missing. Everything listens on 127.0.0.1; every
process it starts is stopped when it ends, also on Ctrl-C, SIGTERM, or an error.

Usage: benches/load/memory.py [--conns 1000,4000,8000] [--rounds 1] [--json out.json] [--binary PATH]
"""

from __future__ import annotations

import argparse, asyncio, json, os, re, resource, shutil, signal, socket, statistics, struct, sys, tempfile, threading, time  # noqa: E401
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402
from compare import Procs, free_ports, read_response, still_open, status_kb, wait_ready  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n"
NAMES = ("tidegate", "haproxy", "nginx")


def pids_of(pid: int) -> list[int]:
    """The process and its children (nginx's worker), found by their parent pid in /proc."""
    kids = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            kids.append(int(d))
    return [pid] + kids


def rss(pid: int) -> tuple[float, float]:
    """(all processes, worker) VmRSS in MB; the worker is the child if there is one."""
    ps = pids_of(pid)
    kb = [status_kb(p, "VmRSS") for p in ps]
    return sum(kb) / 1024, kb[-1] / 1024


def start(name: str, procs: Procs, tmp: Path, backend: int, maxn: int, hard: int, binary: Path):
    port, admin = free_ports(2)
    if name == "tidegate":
        conf = tmp / "tidegate.yaml"
        conf.write_text(
            f"admin:\n  listen: 127.0.0.1:{admin}\nworkers: 1\nlisteners:\n  - name: web\n"
            f"    listen: 127.0.0.1:{port}\nroutes:\n  - name: bench\n    versions:\n      - name: stable\n"
            f"        weight: 100\n        endpoints: [127.0.0.1:{backend}]\n"
            f"timeouts:\n  drain: 1s\n  request_header: 300s\nlimits:\n  max_connections: {maxn + 256}\n"
        )
        argv, env = [str(binary), "proxy", "--config", str(conf)], dict(os.environ, RUST_LOG="warn")
    elif name == "haproxy":
        conf, maxconn = tmp / "haproxy.cfg", min(maxn + 256, (hard - 200) // 2)
        conf.write_text(
            f"global\n  nbthread 1\n  maxconn {maxconn}\n  ulimit-n {min(hard, 2 * maxconn + 100)}\n"
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 60s\n"
            f"  timeout http-keep-alive 300s\nfrontend fe\n  bind 127.0.0.1:{port}\n  option forwardfor\n"
            "  http-request set-header X-Forwarded-Proto http\n"
            "  http-request set-header X-Forwarded-Host %[req.hdr(host)]\n"
            "  http-request set-header X-Request-ID %[uuid] unless { req.hdr(x-request-id) -m found }\n"
            f"  default_backend be\nbackend be\n  server s1 127.0.0.1:{backend}\n"
        )
        argv, env = ["haproxy", "-db", "-f", str(conf)], None
    else:  # compare.py's nginx proxy, with a master and a worker and room for maxn connections
        orig, wc = compare.nginx_conf, maxn + 2000

        def conf_with_master(tmp_, name_, body):
            path = orig(tmp_, name_, body)
            text = path.read_text()
            for old, new in (("master_process off;", "master_process on;"),
                             ("worker_connections 8192;", f"worker_connections {wc};"),
                             ("worker_rlimit_nofile 20000;", f"worker_rlimit_nofile {min(hard, 2 * wc)};")):
                assert old in text, f"compare.nginx_conf no longer has {old!r}"
                text = text.replace(old, new)
            path.write_text(text)
            return path

        compare.nginx_conf = conf_with_master
        try:
            p, log = compare.start_nginx_proxy(procs, tmp, "", port, backend)
        finally:
            compare.nginx_conf = orig
        wait_ready(name, port, p, log)
        return p, port
    log = tmp / f"{name}.log"
    p = procs.start(argv, log, env)
    wait_ready(name, port, p, log)
    return p, port


def close_all(conns: list[socket.socket]) -> None:
    for s in conns:  # RST, not FIN: no thousands of TIME_WAIT sockets left between phases
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


def ladder(port: int, pid: int, steps: list[int]) -> dict:
    """Opens idle keep-alive connections up to each step in turn (one GET each) and reads RSS."""
    conns: list[socket.socket] = []
    out, failed = {}, 0
    try:
        for n in steps:
            while len(conns) < n and failed < 50:
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    conns.append(s)
                    s.sendall(REQUEST)
                    failed += not read_response(s)
                except OSError:
                    failed += 1
            time.sleep(1.0)
            open_now = sum(1 for s in conns if still_open(s))
            out[n] = {"rss": rss(pid), "open": open_now, "failed": failed}
    finally:
        close_all(conns)
    return out


async def aio_load(port: int, conns: int, seconds: float) -> dict:
    end, st = time.monotonic() + seconds, {"ok": 0, "err": 0}

    async def one():
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            while time.monotonic() < end:
                w.write(REQUEST)
                head = await r.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await r.readexactly(int(m.group(1)) if m else 0)
                st["ok"] += 1
            w.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            st["err"] += 1

    await asyncio.gather(*(one() for _ in range(conns)))
    return {"rps": st["ok"] / seconds, "errors": st["err"]}


def load(port: int, conns: int, seconds: int, wrk: bool) -> dict:
    if not wrk:
        return asyncio.run(aio_load(port, conns, seconds))
    out = compare.run_tool(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"], seconds + 60)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1)),
            "errors": (sum(map(int, errs.groups())) if errs else 0) + (int(bad.group(1)) if bad else 0)}


def peak_during_load(pid: int, port: int, wrk: bool) -> dict:
    peak, done = [0.0, 0.0], threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[:] = [max(a, b) for a, b in zip(peak, rss(pid))]
            except OSError:
                return
            done.wait(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        r = load(port, 1000, 10, wrk)
    finally:
        done.set()
        t.join()
    return {"peak": tuple(peak), **r}


def one_round(name, procs, tmp, backend, steps, hard, binary, wrk) -> dict:
    p, port = start(name, procs, tmp, backend, steps[-1], hard, binary)
    time.sleep(0.5)
    r = {"idle": rss(p.pid)}
    load(port, 50, 2, wrk)
    time.sleep(1.0)
    r["base"] = rss(p.pid)
    r["conns"] = ladder(port, p.pid, steps)
    procs.stop(p)
    p, port = start(name, procs, tmp, backend, steps[-1], hard, binary)
    r["load"] = peak_during_load(p.pid, port, wrk)
    procs.stop(p)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", default="1000,4000,8000", help="idle connection counts, ascending")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--binary", type=Path, default=compare.REPO / "target/release/tidegate")
    ap.add_argument("--no-wrk", action="store_true", help="use the asyncio load client even if wrk exists")
    args = ap.parse_args()
    steps = sorted(int(c) for c in args.conns.split(","))
    missing = [] if shutil.which("nginx") else ["nginx (required): apt-get install nginx-light"]
    if not args.binary.is_file():
        missing.append(f"tidegate binary {args.binary} (required): cargo build --release")
    if missing:
        print("missing, cannot run:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    names = [n for n in NAMES if n != "haproxy" or shutil.which("haproxy")]
    if "haproxy" not in names:
        print("note: skipping haproxy: apt-get install haproxy", file=sys.stderr)
    wrk = bool(shutil.which("wrk")) and not args.no_wrk
    if not wrk and not args.no_wrk:
        print("note: no wrk (apt-get install wrk): load from the asyncio client", file=sys.stderr)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if steps[-1] + 500 > hard:
        print(f"--conns {steps[-1]} needs more than the hard fd limit {hard} allows", file=sys.stderr)
        return 2
    compare.PIN["on"] = False  # memory, not CPU time: nothing is pinned
    procs, tmp = Procs(), Path(tempfile.mkdtemp(prefix="tidegate-mem-"))

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    t0 = time.monotonic()
    try:
        backend = free_ports(1)[0]
        compare.start_backend(procs, tmp, "", backend)
        print(f"tidegate memory comparison, {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs, "
              f"fd limit {hard}, {args.rounds} round(s), load by {'wrk' if wrk else 'asyncio client'}", flush=True)
        raw = {n: [] for n in names}
        for rnd in range(args.rounds):
            for name in names[rnd % len(names):] + names[: rnd % len(names)]:
                raw[name].append(one_round(name, procs, tmp, backend, steps, hard, args.binary, wrk))
                print(f"  round {rnd + 1} {name} done", flush=True)
        report(raw, steps, args.rounds)
        if args.json:
            args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "conns": steps,
                                             "rounds": raw}, indent=2, default=str))
        print(f"run time {time.monotonic() - t0:.0f} s")
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def report(raw: dict, steps: list[int], rounds: int) -> None:
    cols = [(n, 0) for n in raw] + ([("nginx", 1)] if "nginx" in raw else [])
    heads = {("nginx", 0): "nginx m+w", ("nginx", 1): "nginx worker"}
    med = lambda f, n, i: statistics.median(f(r)[i] for r in raw[n])  # noqa: E731
    rows = [("RSS idle, MB", lambda r: r["idle"], ".1f"), ("RSS 0 conns warm, MB", lambda r: r["base"], ".1f")]
    for n in steps:
        rows.append((f"RSS {n} idle conns, MB", lambda r, n=n: r["conns"][n]["rss"], ".1f"))
        rows.append(("  KB per conn", lambda r, n=n: [(a - b) * 1024 / n for a, b in zip(r["conns"][n]["rss"], r["base"])], ".1f"))
    rows.append(("RSS peak, load c1000, MB", lambda r: r["load"]["peak"], ".1f"))
    print(f"\n{'medians of ' + str(rounds) + ' rounds' if rounds > 1 else 'one round':<26}"
          + "".join(f"{heads.get(c, c[0]):>13}" for c in cols))
    for label, f, spec in rows:
        print(f"{label:<26}" + "".join(f"{format(med(f, *c), spec):>13}" for c in cols))
    print(f"{'load req/s (errors)':<26}" + "".join(
        f"{'%.0f (%d)' % (med(lambda r: (r['load']['rps'],), n, 0), sum(r['load']['errors'] for r in raw[n])):>13}"
        for n, _ in cols[: len(raw)]))
    for n in raw:
        for r in raw[n]:
            for c, v in r["conns"].items():
                if v["open"] < c or v["failed"]:
                    print(f"note: {n} at {c}: {v['open']} of {c} still open, {v['failed']} failed")


if __name__ == "__main__":
    sys.exit(main())
