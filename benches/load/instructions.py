#!/usr/bin/env python3
"""User-space instructions per proxied request, tidegate against HAProxy, counted by callgrind.

Wall-clock CPU per request on a shared machine moves by ±5-10 % from run to run; an
instruction count does not: the same binary serving the same load gives the same count per
request to 0.1 %, whatever the neighbours do. It sees user space only (the kernel's share of
a request, the larger one, is the same four socket calls for both proxies: see
docs/benchmarks.md), so it is the figure for judging a change to tidegate's own code, and
compare.py stays the figure for the whole cost.

Each proxy runs under `valgrind --tool=callgrind` with instrumentation off; after a warm-up
with wrk, instrumentation goes on for a wrk run of --duration seconds (wrk -t1 -c50, the same
request as compare.py's: tidegate with its default header work and a 90/10 split, HAProxy
with the same header rules), then off, and the count is divided by the requests wrk saw
answered. The backend is nginx, not instrumented.

Usage: benches/load/instructions.py [--duration 10] [--top 25] [--targets tidegate,haproxy]
       [--tidegate target/release/tidegate] [--keep PATH] [--browser-headers]
       (--keep: where the profiles go, for callgrind_annotate; --browser-headers: requests carry
       the fields compare.py's option of that name adds)
"""

from __future__ import annotations

import argparse
import glob
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402
from compare import Procs, free_ports, run_tool, wait_ready  # noqa: E402


def wrk(port: int, seconds: int) -> int:
    out = run_tool(
        ["wrk", "-t1", "-c50", f"-d{seconds}s", *compare.header_args(), f"http://127.0.0.1:{port}/"], seconds + 60
    )
    m = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    if not m or bad:
        raise RuntimeError(f"wrk saw no requests or failed ones:\n{out}")
    return int(m.group(1))


def callgrind_control(pid: int, *what: str) -> None:
    subprocess.run(["callgrind_control", *what, str(pid)], check=True, capture_output=True, timeout=60)


def measure(name: str, proc, port: int, out: Path, seconds: int, log: Path) -> tuple[int, int, Path]:
    """Instructions and requests of one instrumented wrk run, and the profile written."""
    wait_ready(name, port, proc, log, within=120)
    wrk(port, 2)
    callgrind_control(proc.pid, "-i", "on")
    requests = wrk(port, seconds)
    callgrind_control(proc.pid, "-i", "off")
    before = set(glob.glob(f"{out}*"))
    callgrind_control(proc.pid, "-d")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = sorted(set(glob.glob(f"{out}*")) - before)
        if new:
            profile = Path(new[-1])
            totals = re.search(r"^totals:\s*(\d+)", profile.read_text(errors="replace"), re.M)
            if totals:
                return int(totals.group(1)), requests, profile
        time.sleep(0.2)
    raise RuntimeError(f"no callgrind dump for {name} under {out}")


def top_functions(profile: Path, n: int) -> str:
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(profile)], capture_output=True, text=True, timeout=120
    ).stdout
    lines = [l for l in out.splitlines() if re.match(r"^\s*[\d,]+ \(\s*[\d.]+%\)\s+\S", l)]
    return "\n".join(lines[1 : n + 1])  # the first is the program total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of the instrumented wrk run")
    ap.add_argument("--top", type=int, default=25, help="tidegate's costliest functions to list (0: none)")
    ap.add_argument("--targets", default="tidegate,haproxy")
    ap.add_argument("--tidegate", type=Path, default=compare.REPO / "target/release/tidegate")
    ap.add_argument("--keep", type=Path, help="directory to keep the callgrind profiles in")
    ap.add_argument("--browser-headers", action="store_true", help="requests carry a browser's fields (compare.py's)")
    args = ap.parse_args()
    if args.browser_headers:
        compare.HEADERS[:] = compare.BROWSER_HEADERS
    wanted = args.targets.split(",")
    unknown = [t for t in wanted if t not in ("tidegate", "haproxy")]
    if unknown:
        print(f"unknown targets: {', '.join(unknown)} (tidegate, haproxy)", file=sys.stderr)
        return 2

    missing = [t for t in ("valgrind", "callgrind_control", "nginx", "wrk") if not shutil.which(t)]
    if "haproxy" in wanted and not shutil.which("haproxy"):
        missing.append("haproxy")
    if "tidegate" in wanted and not args.tidegate.is_file():
        missing.append(f"{args.tidegate} (cargo build --release)")
    if missing:
        print("missing, cannot run: " + ", ".join(missing), file=sys.stderr)
        return 2

    compare.PIN["on"] = False  # instruction counts do not depend on where things run
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="tidegate-instr-"))  # configs, logs, and the profiles unless --keep
    keep = args.keep or tmp
    keep.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        backend_port, tg_port, tg_admin, ha_port = free_ports(4)
        compare.start_backend(procs, tmp, "", backend_port)
        for name in wanted:
            out = keep / f"callgrind.{name}"
            wrap = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
            if name == "tidegate":
                proc, log = compare.start_tidegate(
                    procs, tmp, "", tg_port, tg_admin, backend_port, args.tidegate, wrap
                )
                port = tg_port
            else:
                proc, log = compare.start_haproxy(procs, tmp, "", ha_port, backend_port, wrap)
                port = ha_port
            results[name] = measure(name, proc, port, out, args.duration, log)
            procs.stop(proc)

        fields = ", a browser's fields" if compare.HEADERS else ""
        print(f"user-space instructions per request (callgrind; wrk -t1 -c50{fields}, {args.duration} s instrumented)")
        base = results.get("haproxy")
        for name, (instructions, requests, _) in results.items():
            per = instructions / requests
            ratio = f"  {per / (base[0] / base[1]):.3f} x HAProxy" if base and name != "haproxy" else ""
            print(f"  {name:9} {per:9,.0f}  ({requests:,} requests){ratio}")
        if args.top and "tidegate" in results:
            profile = results["tidegate"][2]
            kept = f"; profile {profile}" if args.keep else ""
            print(f"\ntidegate's costliest functions (self cost{kept}):")
            print(top_functions(profile, args.top))
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
