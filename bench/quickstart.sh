#!/usr/bin/env bash
# The README's CLI quickstart as written, on a fresh home; prints the job (time, accuracy, the
# settings the service chose) and two answers. Run by hand: bash bench/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf /tmp/qs; mkdir -p /tmp/qs
export ADALORA_HOME=/tmp/qs/home ADALORA_PORT=8777
export ADALORA_API_KEY=ak_$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
.venv/bin/adalora serve > /tmp/qs/serve.log 2>&1 &
SERVE=$!
trap 'kill $SERVE; wait $SERVE || true' EXIT
for i in $(seq 120); do curl -sf http://127.0.0.1:8777/readyz >/dev/null && break; sleep 1; done
export ADALORA_URL=http://127.0.0.1:8777 ADALORA_KEY=$ADALORA_API_KEY
PATH=$PWD/.venv/bin:$PATH
DS=$(adalora datasets upload examples/sst2_train.csv)
DEV=$(adalora datasets upload examples/sst2_dev.csv)
JOB=$(adalora jobs submit --dataset $DS --validation-dataset $DEV --base-model all-MiniLM-L6-v2 \
      --task classification --text-column text --label-column label --output merged)
AD=$(adalora jobs follow $JOB 2>/tmp/qs/follow.log)
adalora jobs show $JOB > /tmp/qs/job.json
adalora infer $AD "the worst movie I have seen this year" "a gorgeous, witty film" > /tmp/qs/infer.json
python3 - <<'PY'
import json, datetime as dt
job = json.load(open("/tmp/qs/job.json"))
t = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
print("job", job["id"], job["status"], "steps", job["progress"])
print("started", job["started_at"], "finished", job["finished_at"],
      "seconds", (t(job["finished_at"]) - t(job["started_at"])).total_seconds())
print("metrics", job["metrics"])
print("chosen", job["hyperparameters"]["chosen_by_service"])
print("training", job["hyperparameters"]["training"])
print("adalora", job["hyperparameters"]["adalora"])
print(open("/tmp/qs/infer.json").read())
PY
grep -n "eval @" /tmp/qs/follow.log || true
