#!/usr/bin/env bash
# Runs the tests: installs what they need when it is missing (a real Prometheus server and
# nginx as a real backend, from the Debian archive), starts a real Kubernetes API server
# (../shared/tools/k8s-testenv, unless TIDEGATE_TEST_KUBECONFIG names one already), then
# `cargo test --locked`. Extra arguments go to cargo test.
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

if [ -z "${TIDEGATE_TEST_KUBECONFIG:-}" ]; then
  testenv="$(pwd)/../shared/tools/k8s-testenv"
  [ -x "$testenv" ] || { echo "error: $testenv not found: tests/kube_*.rs need a Kubernetes API server" >&2; exit 1; }
  echo "== starting a Kubernetes API server (k8s-testenv; the first time builds it, about 3 minutes)"
  eval "$("$testenv" up)"
  export TIDEGATE_TEST_KUBECONFIG
fi

exec cargo test --locked "$@"
