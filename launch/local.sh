#!/usr/bin/env bash
# N llava-jax training processes on one machine: JAX's multi-controller runtime on
# simulated CPU devices with gloo collectives, the way the tests exercise multi-host code.
#
#   launch/local.sh [--devices K] [--logdir DIR] [--port P] [--grace S] N [train args...]
#   launch/local.sh 2 --config configs/tiny.py --workdir /tmp/tiny2 --config.mesh.fsdp=-1
#
# Each process gets K CPU devices (default 4), so the global mesh has N*K devices.
# Process i writes DIR/process_i.log (process 0 is also echoed here) and DIR/process_i.pid.
# When one process fails the others get S seconds (default 120) to notice on their own
# (JAX's heartbeat should make them exit well before) and are then terminated.
# Exit status: 0 when every process succeeded, else the first failure's status.
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

devices=4
logdir=""
port=""
grace=120
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices) devices="$2"; shift 2 ;;
    --logdir) logdir="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --grace) grace="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    --*) echo "local.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -ge 1 && "$1" =~ ^[1-9][0-9]*$ ]] || { echo "local.sh: N (number of processes) is required" >&2; usage; }
num_processes="$1"
shift

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="python3"; fi
fi
if [[ -z "$logdir" ]]; then
  logdir="$(mktemp -d "${TMPDIR:-/tmp}/llava_jax_local.XXXXXX")"
fi
mkdir -p "$logdir"
if [[ -z "$port" ]]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

# Keep the caller's XLA flags but set our own device count.
xla_flags="$(printf '%s' "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')"
xla_flags="${xla_flags} --xla_force_host_platform_device_count=${devices}"

pids=()
tee_pid=""
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
on_signal() {
  echo "local.sh: interrupted; stopping all processes" >&2
  cleanup
  wait || true
  exit 130
}
trap on_signal INT TERM

echo "local.sh: $num_processes processes x $devices CPU devices, coordinator 127.0.0.1:$port, logs in $logdir"
for ((i = 0; i < num_processes; i++)); do
  log="$logdir/process_$i.log"
  : > "$log"
  JAX_PLATFORMS=cpu XLA_FLAGS="$xla_flags" \
    LLAVA_JAX_COORDINATOR="127.0.0.1:$port" LLAVA_JAX_NUM_PROCESSES="$num_processes" LLAVA_JAX_PROCESS_ID="$i" \
    PYTHONUNBUFFERED=1 "$python" -m llava_jax.cli train "$@" > "$log" 2>&1 &
  pids+=("$!")
  echo "$!" > "$logdir/process_$i.pid"
done
# Echo process 0 to this terminal.
tail -n +1 -f "$logdir/process_0.log" --pid "${pids[0]}" &
tee_pid=$!

declare -a status
first_failure=""
failed_at=0
running="$num_processes"
while [[ "$running" -gt 0 ]]; do
  sleep 1
  running=0
  for ((i = 0; i < num_processes; i++)); do
    [[ -n "${status[$i]:-}" ]] && continue
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      running=$((running + 1))
      continue
    fi
    rc=0
    wait "${pids[$i]}" || rc=$?
    status[i]="$rc"
    echo "$rc" > "$logdir/process_$i.status"
    if [[ "$rc" -ne 0 ]]; then
      echo "local.sh: process $i (pid ${pids[$i]}) exited with status $rc; log: $logdir/process_$i.log" >&2
      if [[ -z "$first_failure" ]]; then first_failure="$rc"; failed_at=$SECONDS; fi
    fi
  done
  if [[ -n "$first_failure" && "$running" -gt 0 && $((SECONDS - failed_at)) -ge "$grace" ]]; then
    echo "local.sh: $running process(es) still running ${grace}s after a failure; terminating them" >&2
    cleanup
  fi
done
wait "$tee_pid" 2>/dev/null || true

if [[ -n "$first_failure" ]]; then
  for ((i = 0; i < num_processes; i++)); do
    if [[ "${status[$i]}" -ne 0 ]]; then
      echo "----- process $i (status ${status[$i]}), last lines of $logdir/process_$i.log -----" >&2
      tail -n 20 "$logdir/process_$i.log" >&2
    fi
  done
  exit "$first_failure"
fi
echo "local.sh: all $num_processes processes succeeded; logs in $logdir"
