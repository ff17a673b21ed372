#!/usr/bin/env bash
# N llava-jax training processes on one machine: JAX's multi-controller runtime on
# simulated CPU devices with gloo collectives, the way the tests exercise multi-host code.
#
#   launch/local.sh [--devices K] [--logdir DIR] [--port P] [--grace S] N [train args...]
#   launch/local.sh 2 --config configs/tiny.py --workdir /tmp/tiny2 --config.mesh.fsdp=-1
#
# Each process gets K CPU devices (default 4), so the global mesh has N*K devices.
# Process i writes DIR/process_i.log (process 0 is also echoed here), DIR/process_i.pid and,
# once it ended, DIR/process_i.status; each runs in its own process group.
# TERM or INT to this script is forwarded (as TERM) to every process, which then has S seconds
# (--grace, default 120) to write its checkpoint and exit before its process group gets SIGKILL;
# a second TERM/INT kills at once. When one process fails, the others get S seconds to notice
# on their own (JAX's heartbeat should make them exit well before), then TERM, then S more.
# Exit status: 0 when every process succeeded, else the status of the first process that
# failed, passed through: 75 / 76 / 77 (llava_jax.runtime.exit_codes) mean "run it again".
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

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
  # Below the ephemeral range, where no outgoing connection can take it before process 0 binds it.
  port="$("$python" "$repo/llava_jax/runtime/ports.py")"
fi

# Keep the caller's XLA flags but set our own device count.
xla_flags="$(printf '%s' "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')"
xla_flags="${xla_flags} --xla_force_host_platform_device_count=${devices}"

pids=()
declare -a status
first_failure=""
failed_at=0
stop_signal=""   # set once the launcher was asked to stop (TERM/INT)
term_at=""       # when TERM went to the processes still running
kill_at=""       # when whatever still runs gets SIGKILL (its whole process group)
waiter=""

# Each process leads its own process group (setsid), so that SIGKILL can take its helpers
# (grain workers) with it; TERM goes to the trainer alone, which stops its workers itself.
running_pids() {
  local i
  for ((i = 0; i < ${#pids[@]}; i++)); do
    [[ -z "${status[$i]:-}" ]] && echo "${pids[$i]}"
  done
}
terminate() {
  local pid
  for pid in $(running_pids); do kill -TERM "$pid" 2>/dev/null || true; done
  term_at=$SECONDS
  kill_at=$((SECONDS + grace))
}
kill_groups() {
  local pid
  for pid in $(running_pids); do
    echo "local.sh: process with pid $pid still running $((SECONDS - term_at))s after TERM; killing its process group" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
  kill_at=""
}
on_signal() {
  [[ -n "$waiter" ]] && kill "$waiter" 2>/dev/null
  if [[ -n "$stop_signal" ]]; then
    echo "local.sh: $1 again; killing every process now" >&2
    kill_groups
    return
  fi
  stop_signal="$1"
  echo "local.sh: $1 received; sending TERM to every process, SIGKILL after ${grace}s" >&2
  terminate
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

new_session=()
if command -v setsid >/dev/null; then new_session=(setsid); fi
echo "local.sh: $num_processes processes x $devices CPU devices, coordinator 127.0.0.1:$port, logs in $logdir"
for ((i = 0; i < num_processes; i++)); do
  [[ -z "$stop_signal" ]] || break  # stopped while starting: start no more
  log="$logdir/process_$i.log"
  : > "$log"
  # setsid execs (no fork) in a background child, so $! is the trainer's pid and its group id.
  JAX_PLATFORMS=cpu XLA_FLAGS="$xla_flags" \
    LLAVA_JAX_COORDINATOR="127.0.0.1:$port" LLAVA_JAX_NUM_PROCESSES="$num_processes" LLAVA_JAX_PROCESS_ID="$i" \
    PYTHONUNBUFFERED=1 "${new_session[@]}" "$python" -m llava_jax.cli train "$@" > "$log" 2>&1 < /dev/null &
  pids+=("$!")
  echo "$!" > "$logdir/process_$i.pid"
done
if [[ "${#pids[@]}" -lt "$num_processes" ]]; then
  echo "local.sh: stopped on $stop_signal after starting ${#pids[@]} of $num_processes processes" >&2
  [[ "${#pids[@]}" -gt 0 ]] || exit 143
  num_processes="${#pids[@]}"
fi
# Echo process 0 to this terminal.
tail -n +1 -f "$logdir/process_0.log" --pid "${pids[0]}" &
tee_pid=$!

running="$num_processes"
while [[ "$running" -gt 0 ]]; do
  # A background sleep: `wait` returns as soon as a trapped signal arrives.
  sleep 1 &
  waiter=$!
  wait "$waiter" 2>/dev/null || true
  waiter=""
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
  [[ "$running" -gt 0 ]] || break
  if [[ -z "$term_at" && -n "$first_failure" && $((SECONDS - failed_at)) -ge "$grace" ]]; then
    echo "local.sh: $running process(es) still running ${grace}s after a failure; sending TERM" >&2
    terminate
  fi
  if [[ -n "$kill_at" && "$SECONDS" -ge "$kill_at" ]]; then kill_groups; fi
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
if [[ -n "$stop_signal" ]]; then
  echo "local.sh: stopped on $stop_signal; every process exited with status 0"
  exit 0
fi
echo "local.sh: all $num_processes processes succeeded; logs in $logdir"
