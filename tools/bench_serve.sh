#!/usr/bin/env bash
# The job API's overhead on this machine: requests per second for listing jobs and reading one
# job's status with 1,000 jobs in the database (wrk, 2 threads, 16 connections, 10 s each), and
# the time from a job's creation to its first denoising step (the demo model; cold = the first
# job, which loads the model; warm = later jobs, which find it loaded).
# Usage: tools/bench_serve.sh [sqlite|postgres]   (postgres starts the test server of tools/test)
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:-sqlite}
command -v wrk >/dev/null || { echo "installing wrk" >&2; apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p skyreels-cli
S=$PWD/target/release/skyreels
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"; [ "$backend" = postgres ] && psql "$url" -qc "DROP DATABASE IF EXISTS $name" >/dev/null 2>&1; true' EXIT
db=()
if [ "$backend" = postgres ]; then
  url=$(tools/test/postgres.sh)
  name="skyreels_bench_$$"
  psql "$url" -qc "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name" >/dev/null
  db=(--database "${url%/*}/$name")
fi

start_server() { # data dir, extra flags…; sets $base
  local data=$1; shift
  "$S" serve --data "$data" "${db[@]}" --listen 127.0.0.1:0 --max-queue 5000 "$@" > "$work/serve.out" 2>"$work/serve.err" &
  for _ in $(seq 1 100); do
    base=$(sed -n 's/^listening on //p' "$work/serve.out"); [ -n "$base" ] && return; sleep 0.1
  done
  cat "$work/serve.err" >&2; exit 1
}

# 1. Listing and status with 1,000 queued jobs (no worker: they stay in the database).
token=$("$S" serve token create --name bench --data "$work/a" "${db[@]}" 2>/dev/null)
start_server "$work/a" --no-worker
python3 - "$base" "$token" > "$work/id" <<'PY'
import http.client, json, sys, time
host = sys.argv[1].removeprefix("http://"); token = sys.argv[2]
conn = http.client.HTTPConnection(host)
body = json.dumps({"prompt": "a red ball bounces", "frames": 33, "steps": 3})
start = time.perf_counter()
for _ in range(1000):
    conn.request("POST", "/v1/jobs", body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    reply = conn.getresponse(); data = reply.read()
    assert reply.status == 201, data
print(json.loads(data)["id"])
print(f"{1000 / (time.perf_counter() - start):.0f}", file=sys.stderr)
PY
id=$(cat "$work/id")
rps() { wrk -t2 -c16 -d10s -H "Authorization: Bearer $token" "$base$1" | awk '/Requests\/sec/ {print $2}'; }
list_rps=$(rps "/v1/jobs?limit=20")
status_rps=$(rps "/v1/jobs/$id")
health_rps=$(wrk -t2 -c16 -d10s "$base/v1/health" | awk '/Requests\/sec/ {print $2}')
kill %1; wait 2>/dev/null || true

# 2. Creation to first step, with the server's own worker.
if [ "$backend" = postgres ]; then psql "$url" -qc "DROP DATABASE $name" -c "CREATE DATABASE $name" >/dev/null; fi
token=$("$S" serve token create --name bench --data "$work/b" "${db[@]}" 2>/dev/null)
start_server "$work/b"
latencies=$(python3 - "$base" "$token" <<'PY'
import http.client, json, sys, time
host = sys.argv[1].removeprefix("http://"); token = sys.argv[2]
auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
conn = http.client.HTTPConnection(host)
def call(method, path, body=None):
    conn.request(method, path, body, auth); r = conn.getresponse(); return r.status, json.loads(r.read())
out = []
for i in range(4):
    start = time.perf_counter()
    status, job = call("POST", "/v1/jobs", json.dumps({"prompt": f"a ball {i}", "frames": 33, "steps": 20}))
    assert status == 201, job
    while True:
        _, job = call("GET", f"/v1/jobs/{job['id']}")
        if (job.get("progress") or {}).get("steps_done"):
            out.append(time.perf_counter() - start); break
        time.sleep(0.002)
    while call("GET", f"/v1/jobs/{job['id']}")[1]["state"] != "done":
        time.sleep(0.02)
print(f"{out[0]*1000:.0f} {min(out[1:])*1000:.0f}")
PY
)
read -r cold warm <<< "$latencies"

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
echo "skyreels serve, $backend, $(nproc) cores ($cpu), release build"
echo
echo "| measurement | value |"
echo "|---|---|"
echo "| GET /v1/jobs?limit=20, 1,000 jobs in the database | $list_rps req/s |"
echo "| GET /v1/jobs/{id}, 1,000 jobs in the database | $status_rps req/s |"
echo "| GET /v1/health (no database) | $health_rps req/s |"
echo "| creation → first step, first job (loads the demo model) | $cold ms |"
echo "| creation → first step, later jobs (model loaded) | $warm ms |"
