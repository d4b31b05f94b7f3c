#!/usr/bin/env python3
"""Memory on loopback: resident memory of tidegate, HAProxy and nginx as reverse proxies in front of one nginx backend.

One worker per proxy (tidegate `workers: 1`, HAProxy `nbthread 1`, nginx `worker_processes 1`).
Each phase runs on a freshly started proxy, one proxy at a time, so that memory one phase left
behind does not show in the next. Per proxy and round:

  RSS idle        VmRSS after start and a readiness probe, no connections open
  RSS 0 conns     VmRSS after a 2 s warm-up load (50 connections), all closed again: the baseline
  RSS N conns     VmRSS with N idle keep-alive client connections open, each having sent one GET and
                  read its response; opened cumulatively, read 1 s after the last one.
                  KB per conn = (RSS N conns - RSS 0 conns) / N
  RSS load peak   a new process: peak VmRSS sampled every 0.1 s during wrk -t1 -c1000 -d10s (without
                  wrk: an asyncio client whose 1000 connections each send requests in a loop for 10 s)

nginx runs as a master and one worker; its column is master + worker, the last column the worker
alone. --rounds > 1: medians. Limits: the fd soft limit is raised to the hard limit (the proxies
inherit it); tidegate `limits.max_connections` and HAProxy `maxconn` are the largest N + 256
(HAProxy `ulimit-n` twice that), nginx `worker_connections` the largest N + 2000 (client +
upstream under load); idle timeouts are 300 s (tidegate: `timeouts.request_header`).

Backend, process handling and nginx's proxy config come from compare.py. Installs nothing: says
what is missing. All on 127.0.0.1; every process started is stopped on any exit.

Usage: benches/load/memory.py [--conns 1000,4000,8000] [--rounds 1] [--json out.json] [--binary PATH]
"""

import argparse, asyncio, json, os, re, resource, shutil, signal, socket, statistics, struct, sys, tempfile, threading, time  # noqa: E401
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402
from compare import Procs, free_ports, read_response, still_open, status_kb, wait_ready  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n"


def rss(pid: int) -> tuple[float, float]:
    """VmRSS in MB of (the process and its children, the last child): nginx's master + worker, worker."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    kb = [status_kb(p, "VmRSS") for p in [pid, *map(int, kids)]]
    return sum(kb) / 1024, kb[-1] / 1024


def start(name: str, procs: Procs, *rest):
    """Starts `name` on fresh ports; retried twice, as a free port can be taken before the bind."""
    for attempt in range(3):
        n = len(procs.started)
        try:
            return start_once(name, procs, *rest)
        except RuntimeError as e:
            for p in procs.started[n:]:
                stop(procs, p)
            if attempt == 2:
                raise
            print(f"note: {name} did not start, again on other ports: {str(e).splitlines()[0]}", file=sys.stderr)


def stop(procs: Procs, p) -> None:
    procs.stop(p)
    procs.started.remove(p)  # so that stop_all never signals a pid that may be reused by then


def start_once(name: str, procs: Procs, tmp: Path, backend: int, maxn: int, hard: int, binary: Path):
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
        for s in conns:  # RST, not FIN: no thousands of TIME_WAIT sockets left between phases
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
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
    """Runs the 1000-connection load and samples RSS every 0.1 s meanwhile."""
    peak, done = [0.0, 0.0], threading.Event()

    def sample():
        while not done.wait(0.1):
            peak[:] = [max(a, b) for a, b in zip(peak, rss(pid))]

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        return {**load(port, 1000, 10, wrk), "peak": peak}
    finally:
        done.set()
        t.join()


def one_round(name, procs, tmp, backend, steps, hard, binary, wrk) -> dict:
    p, port = start(name, procs, tmp, backend, steps[-1], hard, binary)
    time.sleep(0.5)
    r = {"idle": rss(p.pid)}
    load(port, 50, 2, wrk)
    time.sleep(1.0)
    r["base"] = rss(p.pid)
    r["conns"] = ladder(port, p.pid, steps)
    stop(procs, p)
    p, port = start(name, procs, tmp, backend, steps[-1], hard, binary)
    r["load"] = peak_during_load(p.pid, port, wrk)
    stop(procs, p)
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
    missing += [] if args.binary.is_file() else [f"tidegate binary {args.binary} (required): cargo build --release"]
    if missing:
        print("missing, cannot run:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    names = [n for n in ("tidegate", "haproxy", "nginx") if n != "haproxy" or shutil.which("haproxy")]
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
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
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
    """Rows are measures, columns proxies (and nginx's worker alone); medians over the rounds."""
    cols = [(n, 0) for n in raw] + ([("nginx", 1)] if "nginx" in raw else [])
    rows = [("RSS idle, MB", lambda r: r["idle"]), ("RSS 0 conns warm, MB", lambda r: r["base"])]
    for n in steps:
        rows.append((f"RSS {n} idle conns, MB", lambda r, n=n: r["conns"][n]["rss"]))
        rows.append(("  KB per conn", lambda r, n=n: [(a - b) * 1024 / n for a, b in zip(r["conns"][n]["rss"], r["base"])]))
    rows.append(("RSS peak, load c1000, MB", lambda r: r["load"]["peak"]))
    rows.append(("load req/s", lambda r: [r["load"]["rps"]] * 2))
    heads = {("nginx", 0): "nginx m+w", ("nginx", 1): "nginx worker"}
    print(f"\n{f'medians of {rounds} rounds' if rounds > 1 else 'one round':<26}" + "".join(f"{heads.get(c, c[0]):>13}" for c in cols))
    for label, f in rows:
        print(f"{label:<26}" + "".join(f"{statistics.median(f(r)[i] for r in raw[n]):13.1f}" for n, i in cols))
    errors = {n: sum(r["load"]["errors"] for r in raw[n]) for n in raw}
    if any(errors.values()):
        print("note: load errors (wrk socket errors and non-2xx, summed over rounds): " + str(errors))
    for n, c, v in ((n, c, v) for n in raw for r in raw[n] for c, v in r["conns"].items()):
        if v["open"] < c or v["failed"]:
            print(f"note: {n} at {c}: {v['open']} of {c} still open, {v['failed']} failed")


if __name__ == "__main__":
    sys.exit(main())
