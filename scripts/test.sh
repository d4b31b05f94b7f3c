#!/usr/bin/env bash
# Runs the tests: installs what they need when it is missing (a real Prometheus server, from
# the Debian archive), then `cargo test --locked`. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null 2>&1; then
  echo "== installing prometheus (tests/prometheus*.rs run a real server)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
fi

exec cargo test --locked "$@"
