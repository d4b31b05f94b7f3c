#!/usr/bin/env bash
# Runs the tests: installs what they need when it is missing (a real Prometheus server and
# nginx as a real backend, from the Debian archive), then `cargo test --locked`. Extra
# arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)   # tests/prometheus*.rs
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)                 # tests/process.rs
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

exec cargo test --locked "$@"
