#!/usr/bin/env bash
# llava-jax training on Cloud TPU VMs: one slice, or several joined over DCN (multislice);
# one process per TPU VM host, JAX multi-controller.
#
#   TPU_NAME=llava ZONE=us-east5-b ACCELERATOR_TYPE=v5p-128 \
#     launch/tpu_pod.sh [--dry-run] --config configs/finetune_13b.py --workdir /mnt/disks/gcs/my-bucket/runs/ft13b \
#       --config.mesh.data=16 --config.mesh.fsdp=4
#
# Steps: (1) create the slice unless it exists (a PREEMPTED/TERMINATED one is deleted and
# created again); NUM_SLICES > 1 asks for a queued resource of that many slices (nodes
# TPU_NAME-0, TPU_NAME-1, ...), whose workers get the MEGASCALE_* settings from the TPU runtime;
# (2) copy this checkout (tracked files, uncommitted edits included) to every worker and
# install it with jax[tpu] into a Python >= 3.11 virtual environment (~/REMOTE_VENV), made by
# uv (which fetches that Python when the image has an older one) or from REMOTE_PYTHON;
# (3) optionally mount a GCS bucket with gcsfuse on every worker; (4) run `llava-jax train ARGS`
# on all workers at once. Every worker must see the same WORKDIR: a gs:// path, the gcsfuse
# mount, or Filestore/NFS (launch/README.md, "Storage"). A run that ends with a restartable
# status (75 lost peer, 76 preempted, 77 stalled) or because the slice went away is started
# again (up to MAX_RESTARTS) and resumes from the last checkpoint in WORKDIR.
# --dry-run prints the gcloud commands (and what runs on the workers) instead of running them.
#
# Environment (defaults in brackets):
#   TPU_NAME, ZONE                 required (with NUM_SLICES > 1: the queued resource's name)
#   PROJECT                        [gcloud's default project]
#   ACCELERATOR_TYPE               [v5p-8]  e.g. v5litepod-256, v5p-128, v6e-64 (per slice)
#   NUM_SLICES                     [1]  >1: multislice through a queued resource
#   RUNTIME_VERSION                [from ACCELERATOR_TYPE: v2-alpha-tpuv5-lite, v2-alpha-tpuv5, v2-alpha-tpuv6e]
#   SPOT=1                         create Spot capacity (preemptible; restarts handled here)
#   SKIP_CREATE=1 / SKIP_INSTALL=1 reuse what is there
#   PYTHON_VERSION                 [3.11] Python of the workers' environment (>= 3.11)
#   REMOTE_PYTHON                  an interpreter on the workers to build it from instead of uv
#   REMOTE_VENV                    [llava_jax_venv] the environment's directory in each worker's home
#   GCS_BUCKET                     gcsfuse-mount this bucket at /mnt/disks/gcs/$GCS_BUCKET on every worker
#   LIBTPU_INIT_ARGS               XLA TPU flags [async collective fusion, see below]
#   MAX_RESTARTS                   [3] re-create + resume after a preemption
#   REMOTE_DIR                     [llava_jax] directory in each worker's home
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == --dry-run ]]; then
  DRY_RUN=1
  shift
fi
if [[ $# -eq 0 ]]; then
  sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5p-8}"
NUM_SLICES="${NUM_SLICES:-1}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"
REMOTE_DIR="${REMOTE_DIR:-llava_jax}"
REMOTE_VENV="${REMOTE_VENV:-llava_jax_venv}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
REMOTE_PYTHON="${REMOTE_PYTHON:-}"
if [[ -z "${RUNTIME_VERSION:-}" ]]; then
  case "$ACCELERATOR_TYPE" in
    v5litepod-*|v5e-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    *) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
  esac
fi
# Overlap collectives with compute (the TPU compiler's latency-hiding scheduler is on by default).
LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS:---xla_tpu_enable_async_collective_fusion=true --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true --xla_tpu_enable_async_collective_fusion_multiple_steps=true --xla_tpu_overlap_compute_collective_tc=true --xla_enable_async_all_gather=true}"

# llava-jax needs Python >= 3.11 (setup.py python_requires); the stock TPU VM images ship 3.10.
if ! [[ "$PYTHON_VERSION" =~ ^3\.([0-9]+)(\.[0-9]+)?$ ]] || [[ "${BASH_REMATCH[1]}" -lt 11 ]]; then
  echo "tpu_pod.sh: PYTHON_VERSION=$PYTHON_VERSION: llava-jax needs Python 3.11 or newer (e.g. PYTHON_VERSION=3.11)" >&2
  exit 2
fi
if ! [[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]]; then
  echo "tpu_pod.sh: NUM_SLICES=$NUM_SLICES is not a positive integer" >&2
  exit 2
fi

where=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then where+=(--project="$PROJECT"); fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "$NUM_SLICES" -gt 1 ]]; then
  gcloud_res=(gcloud compute tpus queued-resources)
  nodes=()
  for ((i = 0; i < NUM_SLICES; i++)); do nodes+=("$TPU_NAME-$i"); done
else
  gcloud_res=(gcloud compute tpus tpu-vm)
  nodes=("$TPU_NAME")
fi

run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "+ $*"
  else
    "$@"
  fi
}

# READY when the slice(s) can run, "" when absent, else the provider's state.
state() {
  [[ "$DRY_RUN" == 1 ]] && return 0
  local s
  if [[ "$NUM_SLICES" -gt 1 ]]; then
    s="$("${gcloud_res[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state.state)' 2>/dev/null || true)"
    [[ "$s" == ACTIVE ]] && s=READY
  else
    s="$("${gcloud_res[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state)' 2>/dev/null || true)"
  fi
  echo "$s"
}

created=0
create() {
  local current
  current="$(state)"
  case "$current" in
    READY) echo "tpu_pod.sh: reusing $TPU_NAME (READY)"; return ;;
    PREEMPTED|TERMINATED|STOPPED|FAILED|SUSPENDED)
      echo "tpu_pod.sh: $TPU_NAME is $current; deleting and creating it again"
      if [[ "$NUM_SLICES" -gt 1 ]]; then
        run "${gcloud_res[@]}" delete "$TPU_NAME" "${where[@]}" --quiet --force
      else
        run "${gcloud_res[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
      fi ;;
    "") ;;
    *) echo "tpu_pod.sh: $TPU_NAME is $current; waiting for it"; sleep 60; create; return ;;
  esac
  local extra=()
  if [[ "${SPOT:-0}" == 1 ]]; then extra+=(--spot); fi
  echo "tpu_pod.sh: creating $TPU_NAME ($NUM_SLICES x $ACCELERATOR_TYPE, $RUNTIME_VERSION)"
  if [[ "$NUM_SLICES" -gt 1 ]]; then
    run "${gcloud_res[@]}" create "$TPU_NAME" "${where[@]}" --node-count="$NUM_SLICES" --node-prefix="$TPU_NAME" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" "${extra[@]}"
    wait_active
  else
    run "${gcloud_res[@]}" create "$TPU_NAME" "${where[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME_VERSION" "${extra[@]}"
  fi
  created=1
}

# A queued resource is granted asynchronously: wait until every slice is up.
wait_active() {
  [[ "$DRY_RUN" == 1 ]] && return 0
  local s
  while s="$(state)"; [[ "$s" != READY ]]; do
    case "$s" in
      FAILED|SUSPENDED) echo "tpu_pod.sh: queued resource $TPU_NAME is $s" >&2; return 1 ;;
    esac
    echo "tpu_pod.sh: queued resource $TPU_NAME is ${s:-not visible yet}; waiting"
    sleep 60
  done
}

on_all() {
  if [[ "$NUM_SLICES" -gt 1 ]]; then
    run "${gcloud_res[@]}" ssh "$TPU_NAME" "${where[@]}" --node=all --worker=all --command="$1"
  else
    run "${gcloud_res[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"
  fi
}

install() {
  local archive node
  archive="$(mktemp "${TMPDIR:-/tmp}/llava_jax_src.XXXXXX.tar.gz")"
  # HEAD plus uncommitted changes to tracked files: what you see is what runs.
  (cd "$repo" && git ls-files -z | tar --null --ignore-failed-read -T - -czf "$archive")
  echo "tpu_pod.sh: copying the checkout to every worker"
  for node in "${nodes[@]}"; do
    run gcloud compute tpus tpu-vm scp "$archive" "$node:llava_jax_src.tar.gz" "${where[@]}" --worker=all
  done
  rm -f "$archive"
  # The environment: Python >= 3.11 from REMOTE_PYTHON, else from uv (installed to ~/.local/bin
  # when missing; it downloads a standalone CPython when the image has none of that version).
  # Its version is checked before anything is installed into it.
  local venv="\$HOME/$REMOTE_VENV"
  on_all "set -e
    version() { \"\$1\" -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])'; }
    too_old() { local v=\$(version \"\$1\"); local minor=\${v#3.}; minor=\${minor%%.*}; [ \"\${v%%.*}\" != 3 ] || [ \"\$minor\" -lt 11 ]; }
    rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/llava_jax_src.tar.gz -C ~/$REMOTE_DIR
    if [ -n '$REMOTE_PYTHON' ]; then
      command -v '$REMOTE_PYTHON' >/dev/null || { echo \"tpu_pod.sh: REMOTE_PYTHON=$REMOTE_PYTHON not found on \$(hostname)\" >&2; exit 3; }
      if too_old '$REMOTE_PYTHON'; then
        echo \"tpu_pod.sh: REMOTE_PYTHON=$REMOTE_PYTHON on \$(hostname) is Python \$(version '$REMOTE_PYTHON'); llava-jax needs Python >= 3.11. Leave REMOTE_PYTHON unset (uv installs Python $PYTHON_VERSION) or name a newer interpreter.\" >&2
        exit 3
      fi
      rm -rf $venv && '$REMOTE_PYTHON' -m venv $venv
    else
      export PATH=\"\$HOME/.local/bin:\$PATH\"
      command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
      rm -rf $venv && uv venv --seed --python $PYTHON_VERSION $venv
    fi
    if too_old $venv/bin/python; then
      echo \"tpu_pod.sh: $venv on \$(hostname) has Python \$(version $venv/bin/python); llava-jax needs Python >= 3.11\" >&2
      exit 3
    fi
    $venv/bin/python -m pip install -q --upgrade pip
    $venv/bin/python -m pip install -q -e ~/$REMOTE_DIR 'jax[tpu]==0.10.2'"
}

mount_bucket() {
  [[ -n "${GCS_BUCKET:-}" ]] || return 0
  echo "tpu_pod.sh: mounting gs://$GCS_BUCKET at /mnt/disks/gcs/$GCS_BUCKET on every worker"
  on_all "set -e; if ! command -v gcsfuse >/dev/null; then
      echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -c -s)' main' | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
      sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; fi
    sudo mkdir -p /mnt/disks/gcs/$GCS_BUCKET && sudo chown \$(id -u):\$(id -g) /mnt/disks/gcs/$GCS_BUCKET
    mountpoint -q /mnt/disks/gcs/$GCS_BUCKET || gcsfuse --implicit-dirs $GCS_BUCKET /mnt/disks/gcs/$GCS_BUCKET"
}

train() {
  local args=""
  printf -v args '%q ' "$@"
  # LLAVA_JAX_DISTRIBUTED=1: JAX's Cloud TPU detection finds the workers, the coordinator and,
  # on a multislice queued resource, the slices (MEGASCALE_* in the TPU metadata).
  on_all "cd ~/$REMOTE_DIR && LLAVA_JAX_DISTRIBUTED=1 LIBTPU_INIT_ARGS='$LIBTPU_INIT_ARGS' \
    ~/$REMOTE_VENV/bin/python -m llava_jax.cli train $args"
}

attempt=0
while true; do
  created=0
  if [[ "${SKIP_CREATE:-0}" != 1 || "$attempt" -gt 0 ]]; then create; fi
  # A new slice has nothing installed; a reused one keeps what the first attempt put there.
  if [[ "$created" == 1 || ( "$attempt" -eq 0 && "${SKIP_INSTALL:-0}" != 1 ) ]]; then install; fi
  mount_bucket
  rc=0
  train "$@" || rc=$?
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "tpu_pod.sh: dry run, nothing was run"
    exit 0
  fi
  if [[ "$rc" -eq 0 ]]; then
    echo "tpu_pod.sh: training finished"
    exit 0
  fi
  current="$(state)"
  # 75 lost peer, 76 preempted with a checkpoint, 77 stalled (llava_jax.runtime.exit_codes): run again.
  # Anything else on a healthy slice is a real error.
  if [[ "$current" == READY && "$rc" -ne 75 && "$rc" -ne 76 && "$rc" -ne 77 ]]; then
    echo "tpu_pod.sh: training failed (status $rc) on a healthy slice; not restarting" >&2
    exit "$rc"
  fi
  attempt=$((attempt + 1))
  if [[ "$attempt" -gt "$MAX_RESTARTS" ]]; then
    echo "tpu_pod.sh: slice is ${current:-gone} after $MAX_RESTARTS restarts; giving up" >&2
    exit "$rc"
  fi
  echo "tpu_pod.sh: slice is ${current:-gone} (status $rc); restart $attempt of $MAX_RESTARTS, resuming from the last checkpoint"
done
