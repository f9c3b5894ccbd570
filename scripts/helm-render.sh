#!/usr/bin/env bash
# Renders the Helm chart ops/helm/ovc for tests/tests/ops.rs when helm is on PATH:
# `helm lint`, `helm template` with the default values and with the optional parts on
# (worker HPA, OTLP endpoint, a PostgreSQL schema), and checks that a missing snapshot
# URL is refused. Prints `export OVC_HELM_RENDERED=...` for the caller to eval (as
# scripts/test.sh does); prints nothing without helm (the test then says it skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v helm >/dev/null 2>&1; then
  echo "helm-render: helm is not on PATH; the chart is checked statically only" >&2
  exit 0
fi
out="${OVC_HELM_OUT:-target/helm-rendered}"
mkdir -p "$out"
chart=ops/helm/ovc
helm lint "$chart" >&2
helm template ovc "$chart" --namespace ovc-system >"$out/default.yaml"
helm template ovc "$chart" --namespace ovc-system \
  --set worker.autoscaling.enabled=true \
  --set otlp.endpoint=http://otel-collector.observability:4317 \
  --set database.schema=ovc \
  --set api.rateLimit=50 >"$out/options.yaml"
if helm template ovc "$chart" --set snapshots.url= >/dev/null 2>&1; then
  echo "helm-render: the chart rendered without snapshots.url; it must be required" >&2
  exit 1
fi
echo "export OVC_HELM_RENDERED=$PWD/$out/default.yaml:$PWD/$out/options.yaml"
