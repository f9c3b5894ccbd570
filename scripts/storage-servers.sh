#!/usr/bin/env bash
# Starts the storage servers the snapshot tests run against, on fixed loopback ports,
# installing them first if they are missing. Idempotent: a server that already answers
# is left alone. Prints `export NAME=VALUE` lines for the tests; use it as
#   eval "$(bash scripts/storage-servers.sh)"
# The tests default to the same ports, so the exports only matter if you change them.
#
#   S3          moto (PyPI moto[server])          127.0.0.1:$OVC_TEST_S3_PORT     (39100)
#   Azure Blob  azurite (npm)                     127.0.0.1:$OVC_TEST_AZBLOB_PORT (39101)
#   GCS         gcp-storage-emulator (PyPI)       127.0.0.1:$OVC_TEST_GCS_PORT    (39102)
#   etcd        Debian etcd-server                127.0.0.1:$OVC_TEST_ETCD_PORT   (39103)
#
# Everything (tools, data, logs) lives under $OVC_STORAGE_SERVERS_DIR
# (/tmp/ovc-storage-servers). Exits non-zero, naming the server and its log, if one
# does not come up.
set -euo pipefail

dir=${OVC_STORAGE_SERVERS_DIR:-/tmp/ovc-storage-servers}
s3_port=${OVC_TEST_S3_PORT:-39100}
az_port=${OVC_TEST_AZBLOB_PORT:-39101}
gcs_port=${OVC_TEST_GCS_PORT:-39102}
etcd_port=${OVC_TEST_ETCD_PORT:-39103}
etcd_peer_port=$((etcd_port + 100))
mkdir -p "$dir/logs"

log() { echo "storage-servers: $*" >&2; }

answers() { # host:port reachable over TCP
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_for() { # name port check-command...
  local name=$1 port=$2
  shift 2
  for _ in $(seq 1 120); do
    if answers "$port" && "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$name did not come up on 127.0.0.1:$port; its log: $dir/logs/$name.log"
  tail -n 20 "$dir/logs/$name.log" >&2 || true
  exit 1
}

# --- installs ----------------------------------------------------------------------
venv=$dir/venv
if ! "$venv/bin/python" -c 'import moto, gcp_storage_emulator' >/dev/null 2>&1; then
  log "installing moto[server] and gcp-storage-emulator into $venv ..."
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5,<6' 'gcp-storage-emulator>=2024.8' >&2
fi
azurite=$dir/npm/node_modules/.bin/azurite-blob
if [ ! -x "$azurite" ] || [ ! -d "$dir/npm/node_modules/@azure/storage-blob" ]; then
  log "installing azurite into $dir/npm ..."
  npm install --silent --no-audit --no-fund --prefix "$dir/npm" azurite@3 @azure/storage-blob@12 >&2
fi
if ! command -v etcd >/dev/null 2>&1; then
  log "installing etcd-server (apt-get) ..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server) >&2
fi

# Azurite's well-known development account (public, documented by Microsoft).
azurite_connection_string() {
  echo "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:$az_port/devstoreaccount1;"
}

# --- servers -----------------------------------------------------------------------
start() { # name port command...
  local name=$1 port=$2
  shift 2
  if answers "$port"; then return 0; fi
  log "starting $name on 127.0.0.1:$port ..."
  nohup "$@" >"$dir/logs/$name.log" 2>&1 &
}

start moto "$s3_port" "$venv/bin/moto_server" -H 127.0.0.1 -p "$s3_port"
start azurite "$az_port" "$azurite" --blobHost 127.0.0.1 --blobPort "$az_port" \
  --location "$dir/azurite" --skipApiVersionCheck --loose --silent
start gcs "$gcs_port" "$venv/bin/gcp-storage-emulator" start --host 127.0.0.1 \
  --port "$gcs_port" --in-memory
mkdir -p "$dir/etcd"
start etcd "$etcd_port" etcd --name ovc-test --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "ovc-test=http://127.0.0.1:$etcd_peer_port"

wait_for moto "$s3_port" curl -fs "http://127.0.0.1:$s3_port/moto-api/"
wait_for azurite "$az_port" true
wait_for gcs "$gcs_port" curl -fs "http://127.0.0.1:$gcs_port/storage/v1/b"
wait_for etcd "$etcd_port" curl -fs "http://127.0.0.1:$etcd_port/health"
# The bucket and container the tests use (creating one that exists is fine).
bucket=${OVC_TEST_BUCKET:-ovc-test}
curl -fs -X PUT "http://127.0.0.1:$s3_port/$bucket" >/dev/null ||
  curl -fs "http://127.0.0.1:$s3_port/$bucket" >/dev/null
curl -s -X POST "http://127.0.0.1:$gcs_port/storage/v1/b?project=ovc" \
  -H 'content-type: application/json' -d "{\"name\": \"$bucket\"}" >/dev/null
NODE_PATH=$dir/npm/node_modules node -e '
  const { BlobServiceClient } = require("@azure/storage-blob");
  const conn = process.argv[1];
  BlobServiceClient.fromConnectionString(conn).getContainerClient(process.argv[2])
    .createIfNotExists().then(() => {}, (e) => { console.error(e.message); process.exit(1); });
' "$(azurite_connection_string)" "$bucket"
log "all up"

cat <<ENV
export OVC_TEST_BUCKET=$bucket
export OVC_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export OVC_TEST_AZBLOB_CONNECTION_STRING='$(azurite_connection_string)'
export OVC_TEST_GCS_ENDPOINT=http://127.0.0.1:$gcs_port
export OVC_TEST_ETCD_ENDPOINT=http://127.0.0.1:$etcd_port
ENV
