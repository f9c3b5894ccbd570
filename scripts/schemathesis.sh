#!/usr/bin/env bash
# Fuzzes the REST API with Schemathesis (from PyPI) against the OpenAPI document of a
# running `ovc dev`: no response may be a 5xx, and every response must match the
# document (status code, content type, body schema). Needs the built target/debug/ovc.
set -euo pipefail
cd "$(dirname "$0")/.."

# Run as a module of the python3 it is installed for (no reliance on an `st` on PATH).
if ! python3 -m schemathesis.cli --version >/dev/null 2>&1; then
  echo "installing schemathesis ..."
  python3 -m pip install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi

data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
grpc_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
grpc_flag=()
if target/debug/ovc dev --help | grep -q -- '--grpc'; then grpc_flag=(--grpc "127.0.0.1:$grpc_port"); fi
target/debug/ovc dev --data-dir "$data" --http "127.0.0.1:$port" "${grpc_flag[@]}" >"$data/dev.log" 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null || true; wait $dev 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 50); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
base="http://127.0.0.1:$port"
# The path examples name team-a: give them something to find.
OVC_SERVER="$base" target/debug/ovc vc create team-a --wait >/dev/null

python3 -m schemathesis.cli run "$base/openapi.json" \
  --checks not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-50}" \
  --generation-deterministic \
  --request-timeout 70
echo "schemathesis: passed"
