#!/usr/bin/env bash
# Runs every test of the workspace on SQLite and PostgreSQL.
#
# PostgreSQL: uses $DATABASE_URL if set; otherwise starts the local cluster if it is not
# running and (re)creates the database ovc_test on 127.0.0.1:5432 as user postgres.
# Each test then works in a schema of its own inside that database.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DATABASE_URL:-}" ]; then
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "starting PostgreSQL ..."
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  fi
  dropdb -h 127.0.0.1 -U postgres --if-exists ovc_test
  createdb -h 127.0.0.1 -U postgres ovc_test
  export DATABASE_URL=postgres://postgres@127.0.0.1:5432/ovc_test
fi

# The storage tests run against real servers on loopback (moto, azurite, the GCS
# emulator, etcd): install and start them unless running (idempotent).
eval "$(bash scripts/storage-servers.sh)"

# The Helm chart rendered for tests/tests/ops.rs when helm is on PATH (OVC_HELM_RENDERED).
eval "$(bash scripts/helm-render.sh)"

# The black-box tests in tests/ run the built `ovc` binary.
cargo build --workspace --bins

if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

# Schemathesis against /openapi.json of a running `ovc dev` (no 5xx, no schema violation).
bash scripts/schemathesis.sh
