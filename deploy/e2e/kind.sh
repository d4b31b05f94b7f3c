#!/usr/bin/env bash
# End to end on a real cluster: creates a kind cluster, builds the image and loads it,
# installs the Helm chart, deploys the annotated demo app (deploy/kubernetes/example-app.yaml)
# and, under steady load through the proxies:
#   1. rolls out a good version (v2) and waits until it is promoted (phase Healthy, new
#      stable revision): not one request may fail;
#   2. rolls out a bad version (v3, answering 500) and waits until the judge aborts it
#      (phase Degraded): afterwards every request is served by stable (v2) again.
# Prints a summary; deletes the cluster on exit (KEEP_CLUSTER=1 keeps it).
#
# Needs docker, kind, kubectl and helm. Settings (environment):
#   KIND_CLUSTER_NAME  the cluster's name (default tidegate-e2e; an existing one is replaced)
#   KIND_NODE_IMAGE    kindest/node image (default: kind's; Kubernetes 1.33 or later)
#   TIDEGATE_IMAGE     image to build and load (default tidegate:e2e)
#   SKIP_BUILD=1       use TIDEGATE_IMAGE as it is in the local Docker
#   KEEP_CLUSTER=1     leave the cluster running at the end
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${KIND_CLUSTER_NAME:-tidegate-e2e}"
IMAGE="${TIDEGATE_IMAGE:-tidegate:e2e}"
CONTEXT="kind-$CLUSTER"
NS=tidegate-system
APP_NS=demo
HOST=demo.example.com
PROXY_URL="http://tidegate-proxy.$NS.svc.cluster.local/"
CURL_IMAGE=curlimages/curl:8.11.1
# Short steps for the test; the judge (errors and p99 against stable) watches throughout.
E2E_STEPS="20,pause:20s,50,pause:20s"

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 2; }
done

k() { kubectl --context "$CONTEXT" "$@"; }
log() { printf '\n== %s\n' "$*"; }
now() { date +%s; }

work="$(mktemp -d)"
passed=0
cleanup() {
  local rc=$?
  if [ "$passed" -ne 1 ] && kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
    log "diagnostics (the run failed)"
    k -n "$APP_NS" get rollouts.tidegate.dev/demo -o yaml || true
    k -n "$APP_NS" get deployments,replicasets,pods,services,endpointslices -o wide || true
    k -n "$APP_NS" get events --sort-by=.lastTimestamp | tail -40 || true
    k -n "$NS" get pods -o wide || true
    k -n "$NS" logs -l app.kubernetes.io/component=controller --prefix --tail=150 || true
    k -n "$NS" logs -l app.kubernetes.io/component=proxy --prefix --tail=80 || true
  fi
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    echo "keeping cluster $CLUSTER (kubectl --context $CONTEXT ...; kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# --- load, from a pod in the cluster --------------------------------------------------------

# One request after another to the proxies with the demo's Host, one line each:
# `<status> <body>` (status 000 when no answer came), until /tmp/stop exists.
# shellcheck disable=SC2016 # expanded by the pod's shell
LOAD_SCRIPT='
url=$1 host=$2 limit=$3
end=$(( $(date +%s) + 1800 ))
n=0
while [ ! -e /tmp/stop ] && [ "$(date +%s)" -lt "$end" ]; do
  rm -f /tmp/body
  code=$(curl -s -o /tmp/body -m 5 -H "Host: $host" -w "%{http_code}" "$url") || code="curl$?"
  body=$(cat /tmp/body 2>/dev/null | tr -cd "a-zA-Z0-9._-" | head -c 40)
  echo "${code:-000} ${body:--}"
  n=$((n + 1))
  if [ "$limit" -gt 0 ] && [ "$n" -ge "$limit" ]; then break; fi
done
'

# start_load NAME [LIMIT]: a pod sending requests until stopped (or LIMIT requests).
start_load() {
  local name=$1 limit=${2:-0}
  k -n "$APP_NS" run "$name" --image="$CURL_IMAGE" --restart=Never --labels=app=e2e-load \
    --command -- sh -c "$LOAD_SCRIPT" load "$PROXY_URL" "$HOST" "$limit" >/dev/null
  # Running, or already done (a pod with a LIMIT can finish before anyone looks).
  local phase deadline=$(($(now) + 180))
  while :; do
    phase="$(k -n "$APP_NS" get "pod/$name" -o jsonpath='{.status.phase}' || true)"
    case "$phase" in
      Running | Succeeded) return 0 ;;
      Failed) echo "error: load pod $name failed: $(k -n "$APP_NS" logs "$name" || true)" >&2; exit 1 ;;
    esac
    [ "$(now)" -lt "$deadline" ] || { echo "error: load pod $name did not start (phase ${phase:-unknown})" >&2; exit 1; }
    sleep 1
  done
}

# finish_load NAME FILE [stop|wait]: stops the pod (or, with `wait`, lets it send all of its
# LIMIT requests), waits for it to end, and keeps its lines in FILE.
finish_load() {
  local name=$1 file=$2 how=${3:-stop} phase deadline=$(($(now) + 180))
  if [ "$how" = stop ]; then
    k -n "$APP_NS" exec "$name" -- touch /tmp/stop 2>/dev/null || true
  fi
  while :; do
    phase="$(k -n "$APP_NS" get "pod/$name" -o jsonpath='{.status.phase}' || true)"
    case "$phase" in Succeeded | Failed) break ;; esac
    [ "$(now)" -lt "$deadline" ] || { echo "error: load pod $name did not stop" >&2; exit 1; }
    sleep 1
  done
  k -n "$APP_NS" logs "$name" >"$file"
  k -n "$APP_NS" delete pod "$name" --wait=false >/dev/null
  [ "$phase" = Succeeded ] || { echo "error: load pod $name failed" >&2; exit 1; }
}

# counts FILE: `N requests, statuses {200: N, ...}, versions {v1: N, ...}`
counts() {
  awk '{ n++; s[$1]++; if ($1 ~ /^2/) v[$2]++ }
    END {
      printf "%d requests, statuses {", n; sep = ""
      for (c in s) { printf "%s%s: %d", sep, c, s[c]; sep = ", " }
      printf "}, 2xx by version {"; sep = ""
      for (b in v) { printf "%s%s: %d", sep, b, v[b]; sep = ", " }
      print "}"
    }' "$1"
}
failed() { awk '$1 !~ /^2/' "$1" | wc -l | tr -d ' '; }

# --- the Rollout's state --------------------------------------------------------------------

state() {
  k -n "$APP_NS" get rollouts.tidegate.dev/demo -o jsonpath='{.status.phase}|{.status.stableRevision}|{.status.promotion.stage}|{.status.stepOf}|{.status.canaryWeight}|{.status.message}' 2>/dev/null || true
}

# wait_for DESCRIPTION TIMEOUT CHECK: polls the Rollout every second, printing each change,
# until CHECK (a function given phase, stable revision and promotion stage) says 0 (done)
# or 2 (went wrong: exit).
wait_for() {
  local what=$1 timeout=$2 check=$3 deadline=$(($(now) + $2)) s last="" phase rev stage step weight message rc
  echo "waiting (up to ${timeout}s) for $what"
  while :; do
    s="$(state)"
    IFS='|' read -r phase rev stage step weight message <<<"$s"
    if [ "$s" != "$last" ]; then
      printf '  %4ss  phase=%s step=%s canary=%s%% stable=%s%s  %s\n' "$SECONDS" \
        "${phase:--}" "${step:--}" "${weight:--}" "${rev:--}" "${stage:+ promotion=$stage}" "${message:-}"
      last="$s"
    fi
    rc=0
    "$check" "$phase" "$rev" "$stage" || rc=$?
    case "$rc" in
      0) return 0 ;;
      2) echo "error: $what: the rollout went wrong (phase $phase)" >&2; exit 1 ;;
    esac
    [ "$(now)" -lt "$deadline" ] || { echo "error: timed out waiting for $what" >&2; exit 1; }
    sleep 1
  done
}

adopted() { [ -n "$2" ] && [ "$1" = Healthy ]; }
promoted() { # the good version is stable: Healthy, no promotion under way, a new revision
  case "$1" in Degraded | Paused) return 2 ;; esac
  [ "$1" = Healthy ] && [ -z "$3" ] && [ -n "$2" ] && [ "$2" != "$old_rev" ]
}
aborted() { # the bad version is rolled back; promoting it is a failure
  if [ "$1" = Healthy ] && [ -n "$2" ] && [ "$2" != "$good_rev" ]; then return 2; fi
  [ "$1" = Degraded ]
}

# --- cluster, image, chart ----------------------------------------------------------------

SECONDS=0
if kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
  log "deleting the existing cluster $CLUSTER"
  kind delete cluster --name "$CLUSTER"
fi
log "creating kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 180s
k version

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building $IMAGE"
  DOCKER_BUILDKIT=1 docker build -t "$IMAGE" .
fi
log "loading $IMAGE into the cluster"
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "installing the chart"
helm install tidegate deploy/helm/tidegate --kube-context "$CONTEXT" \
  --namespace "$NS" --create-namespace \
  --set-string image.repository="${IMAGE%:*}" --set-string image.tag="${IMAGE##*:}" \
  --set image.pullPolicy=Never \
  --wait --timeout 5m
k -n "$NS" get pods -o wide

log "deploying the demo app"
k apply -f deploy/kubernetes/example-app.yaml
k -n "$APP_NS" wait --for=condition=Available deployment/demo --timeout=180s
wait_for "the controller to adopt deployment/demo" 120 adopted
deadline=$(($(now) + 60))
until [ "$(k -n "$APP_NS" get deployment demo -o jsonpath='{.spec.paused}')" = true ]; do
  [ "$(now)" -lt "$deadline" ] || { echo "error: deployment/demo was not paused" >&2; exit 1; }
  sleep 1
done
k -n "$APP_NS" annotate deployment/demo --overwrite "tidegate.dev/steps=$E2E_STEPS"
deadline=$(($(now) + 60))
until [ "$(k -n "$APP_NS" get rollouts.tidegate.dev/demo -o jsonpath='{.spec.steps[3].pause.duration}')" = 20s ]; do
  [ "$(now)" -lt "$deadline" ] || { echo "error: the Rollout did not take the steps $E2E_STEPS" >&2; exit 1; }
  sleep 1
done
old_rev="$(k -n "$APP_NS" get rollouts.tidegate.dev/demo -o jsonpath='{.status.stableRevision}')"
echo "adopted: stable revision $old_rev, steps $E2E_STEPS"

log "waiting for the proxies to route $HOST"
deadline=$(($(now) + 120))
for try in $(seq 1 60); do
  start_load "warmup-$try" 1
  finish_load "warmup-$try" "$work/warmup.log" wait
  if grep -qx '200 v1' "$work/warmup.log"; then break; fi
  [ "$(now)" -lt "$deadline" ] || { echo "error: the proxies never served $HOST: $(cat "$work/warmup.log")" >&2; exit 1; }
  sleep 2
done
grep -qx '200 v1' "$work/warmup.log" || { echo "error: the proxies never served $HOST" >&2; exit 1; }
echo "the proxies serve v1"

# --- 1. a good version ----------------------------------------------------------------------

log "rollout of a good version (v2) under load"
start_load load-good
sleep 5
t0=$SECONDS
k -n "$APP_NS" set env deployment/demo VERSION=v2
wait_for "v2 to be promoted" 600 promoted
good_secs=$((SECONDS - t0))
good_rev="$(k -n "$APP_NS" get rollouts.tidegate.dev/demo -o jsonpath='{.status.stableRevision}')"
sleep 3
finish_load load-good "$work/good.log"
good_counts="$(counts "$work/good.log")"
good_failed="$(failed "$work/good.log")"
echo "during the good rollout: $good_counts"

# --- 2. a bad version -----------------------------------------------------------------------

log "rollout of a bad version (v3, answering 500) under load"
start_load load-bad
sleep 5
t0=$SECONDS
k -n "$APP_NS" set env deployment/demo VERSION=v3 STATUS=500
wait_for "v3 to be rolled back" 300 aborted
bad_secs=$((SECONDS - t0))
aborted_condition="$(k -n "$APP_NS" get rollouts.tidegate.dev/demo -o jsonpath='{.status.conditions[?(@.type=="Aborted")].status}')"
finish_load load-bad "$work/bad.log"
bad_counts="$(counts "$work/bad.log")"
echo "during the bad rollout: $bad_counts"

log "after the rollback: 200 requests"
sleep 2
start_load after 200
finish_load after "$work/after.log" wait
after_counts="$(counts "$work/after.log")"
after_v2="$(grep -c '^200 v2$' "$work/after.log" || true)"
echo "after the rollback: $after_counts"

# --- verdict --------------------------------------------------------------------------------

log "summary"
problems=()
good_total=$(wc -l <"$work/good.log" | tr -d ' ')
[ "$good_total" -ge 100 ] || problems+=("the good rollout saw only $good_total requests")
[ "$good_failed" -eq 0 ] || problems+=("$good_failed requests failed during the good rollout")
grep -q '^200 v2$' "$work/good.log" || problems+=("no request reached v2 during the good rollout")
[ "$(tail -n 1 "$work/good.log")" = "200 v2" ] || problems+=("the good rollout did not end on v2")
[ "$aborted_condition" = True ] || problems+=("condition Aborted is '$aborted_condition', not True")
[ "$after_v2" -eq 200 ] || problems+=("after the rollback only $after_v2 of 200 requests were '200 v2'")
[ "$(k -n "$APP_NS" get rollouts.tidegate.dev/demo -o jsonpath='{.status.stableRevision}')" = "$good_rev" ] ||
  problems+=("the stable revision changed after the rollback")

printf '%-28s %s\n' \
  "good rollout (v1 -> v2):" "promoted in ${good_secs}s; $good_counts" \
  "bad rollout (v2 -> v3):" "rolled back in ${bad_secs}s; $bad_counts" \
  "after the rollback:" "$after_counts" \
  "total time:" "${SECONDS}s"
if [ ${#problems[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${problems[@]}" >&2
  exit 1
fi
passed=1
echo "e2e passed"
