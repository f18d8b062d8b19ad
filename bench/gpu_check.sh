#!/usr/bin/env bash
# bench/gpu_check.sh: every CUDA path the test suite cannot run (it runs on CPU machines), in one
# go, under 10 minutes on one H100, with ONE JSON summary.
#
#   bench/gpu_check.sh [--dry-run] [--budget SECONDS] [SUMMARY.json]
#     SUMMARY.json  where the summary goes; default $OUT/gpu_check.json when OUT is set, else
#                   ./gpu_check.json; each check's full output goes beside it, in gpu_check_logs/
#     --dry-run     print each check's command and write the summary (every check "not_run");
#                   nothing is run, no GPU or venv needed
#     --budget S    stop starting checks once S seconds have passed (default 570); the ones left
#                   are recorded "not_run"
#
# Checks, in order (each one's command is in the summary):
#   gpu_info             torch, CUDA, the GPUs, their compute capability and native bf16
#   train_bf16_resume    tiny BERT trained on cuda in bf16; the same run SIGKILLed between
#   train_fp16_resume    checkpoints and resumed in a new process must give the same adapter,
#                        bitwise (and again in fp16 with its GradScaler): bench/gpu_checks.py
#   serve_bf16_engine    the serving engine on cuda in bf16 against float32 (the bounds of
#                        tests/serving/test_bf16_cpu.py)
#   serve_http_cuda      the HTTP serving tests (/infer, the OpenAI routes with the official
#                        client, /readyz) with ADALORA_INFER_DEVICE=cuda
#   ddp_nccl             two ranks over NCCL against one process (tests/core/test_distributed.py's
#                        settings); "skipped" with fewer than 2 GPUs
#   bench_train_overhead bench/train_overhead.py --device cuda, small (our AdaLoRA/LoRA vs PEFT)
#   bench_infer          bench/infer.py --device cuda, few repetitions (multi-adapter vs PEFT)
#   bench_decode         bench/decode.py --device cuda, 1 and 8 streams of 16 tokens (vs PEFT)
#
# Assumes: this repository checked out, with a virtual environment holding the project and its
# test extra (scripts/dev install makes .venv; or set PYTHON=/path/to/python), a CUDA build of
# torch and at least one NVIDIA GPU (a second for ddp_nccl). The built-in base model wheels are
# needed by the bench_* checks (all-MiniLM-L6-v2; SmolLM2, converted once into a scratch
# folder). No network, PostgreSQL or Redis: the tests that need those skip here (CI is unset).
# Exit status: 0 when every check that ran passed (or --dry-run), 1 otherwise, 2 on bad usage.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '5,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

dry=0 budget=570 summary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --budget)
      [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget needs seconds" >&2; usage; }
      budget=$2; shift ;;
    -h|--help) usage ;;
    -*) echo "gpu_check: unknown option $1" >&2; usage ;;
    *) [ -z "$summary" ] || { echo "gpu_check: one summary path only" >&2; usage; }; summary=$1 ;;
  esac
  shift
done
if [ -z "$summary" ]; then
  summary=${OUT:+$OUT/gpu_check.json}
  summary=${summary:-gpu_check.json}
fi
mkdir -p "$(dirname "$summary")"

PY=${PYTHON:-.venv/bin/python}
if [ "$dry" = 0 ] && [ ! -x "$PY" ]; then
  echo "gpu_check: no Python at $PY (scripts/dev install, or set PYTHON)" >&2
  exit 2
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")  # scratch: results table, model copies
trap 'rm -rf "$work"' EXIT
logs=$(dirname "$summary")/gpu_check_logs
[ "$dry" = 1 ] || mkdir -p "$logs"
results=$work/results.tsv
: >"$results"
started=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
unset CI  # the suite's tests that need PostgreSQL or Redis skip on this machine

# record NAME STATUS SECONDS EXIT LOG COMMAND
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$results"; }

# check NAME TIMEOUT COMMAND...: run it (or print it), time it, keep its output.
check() {
  local name=$1 limit=$2
  shift 2
  local command
  command=$(printf '%q ' "$@")
  if [ "$dry" = 1 ]; then
    echo "[dry-run] $name (timeout ${limit}s): $command"
    record "$name" not_run 0 "" "" "$command"
    return
  fi
  local left=$((budget - ($(date +%s) - started)))
  if [ "$left" -le 10 ]; then
    record "$name" not_run 0 "" "" "$command"
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  local log=$logs/$name.log begin=$SECONDS rc status
  echo "== $name (up to ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  case $rc in
    0) status=pass ;;
    124|137) status=timeout ;;
    *) status=fail ;;
  esac
  echo "   $status in $((SECONDS - begin))s" >&2
  record "$name" "$status" "$((SECONDS - begin))" "$rc" "$log" "$command"
}

if [ "$dry" = 1 ]; then
  gpus="?"
else
  gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
fi

check gpu_info 60 "$PY" -m bench.gpu_checks info
check train_bf16_resume 120 "$PY" -m bench.gpu_checks kill-resume --precision bf16 --device cuda
check train_fp16_resume 120 "$PY" -m bench.gpu_checks kill-resume --precision fp16 --device cuda
check serve_bf16_engine 120 "$PY" -m bench.gpu_checks serve-bf16 --device cuda
check serve_http_cuda 240 env ADALORA_INFER_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
  tests/api/test_infer.py tests/api/openai tests/api/test_serving_device.py
if [ "$gpus" = "?" ] || [ "$gpus" -ge 2 ]; then
  check ddp_nccl 180 "$PY" -m bench.gpu_checks ddp --device cuda
else
  record ddp_nccl skipped 0 "" "" "needs 2 GPUs, found $gpus"
fi
check bench_train_overhead 150 "$PY" -m bench.train_overhead --device cuda --rounds 3 \
  --warmup-rounds 1 --steps 10 --batch-size 32 --seq-len 128
check bench_infer 180 "$PY" bench/infer.py --device cuda --reps 5 --threads 4
check bench_decode 240 "$PY" -m bench.decode --device cuda --streams 1 8 --rounds 2 \
  --new-tokens 16 --home "$work/home"

# One JSON object: every check's status, time, command, its last JSON line (the checks and the
# bench scripts end with one) or last line, and the tail of its output when it did not pass.
summarizer=$(command -v python3 || echo "$PY")
"$summarizer" - "$results" "$summary" "$started" "$dry" "$budget" "$gpus" <<'EOF'
import json, os, socket, subprocess, sys, time

results, summary, started, dry, budget, gpus = sys.argv[1:]
checks = []
for line in open(results, encoding="utf-8").read().splitlines():
    name, status, seconds, code, log, command = line.split("\t")
    entry = {"name": name, "status": status, "seconds": int(seconds), "command": command.strip()}
    if code:
        entry["exit_code"] = int(code)
    if log and os.path.exists(log):
        lines = [l for l in open(log, encoding="utf-8", errors="replace").read().splitlines() if l.strip()]
        last = lines[-1] if lines else ""
        try:
            entry["result"] = json.loads(last)
        except ValueError:
            entry["last_line"] = last[-500:]
        if status != "pass":
            entry["tail"] = lines[-25:]
    checks.append(entry)
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = ""
ran = [c for c in checks if c["status"] not in ("not_run", "skipped")]
document = {
    "script": "bench/gpu_check.sh",
    "dry_run": dry == "1",
    "host": socket.gethostname(),
    "commit": commit or None,
    "gpus": None if gpus == "?" else int(gpus),
    "budget_s": int(budget),
    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(started))),
    "seconds": int(time.time()) - int(started),
    "passed": bool(ran) and all(c["status"] == "pass" for c in ran),
    "checks": checks,
}
with open(summary, "w", encoding="utf-8") as handle:
    json.dump(document, handle, indent=2)
    handle.write("\n")
print(f"summary: {summary} ({sum(c['status'] == 'pass' for c in checks)} of {len(checks)} passed)")
EOF
summarized=$?
[ "$summarized" = 0 ] || exit 1
if [ "$dry" = 1 ]; then
  exit 0
fi
"$summarizer" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["passed"] else 1)' "$summary"
