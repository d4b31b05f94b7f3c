#!/usr/bin/env bash
# Runs the fuzz targets of the HTTP/1.1 wire format (fuzz/): each for SECONDS (default 20),
# from the corpus kept in fuzz/corpus between runs. Installs what it needs if missing: a
# nightly toolchain (libFuzzer's instrumentation) and cargo-fuzz. A crash fails the run and
# leaves its input under fuzz/artifacts/<target>/.
#   scripts/fuzz.sh [SECONDS] [TARGET...]      e.g. scripts/fuzz.sh 600 chunked
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_head response_head chunked)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${seconds}s"
  if ! cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz $t failed; a failing input is kept under fuzz/artifacts/$t/"
    exit 1
  fi
  grep -E '^Done' "$log"
done
