#!/usr/bin/env bash
# llava-jax training on a Cloud TPU VM slice (one process per TPU VM host, JAX multi-controller).
#
#   TPU_NAME=llava ZONE=us-east5-b ACCELERATOR_TYPE=v5p-128 \
#     launch/tpu_pod.sh --config configs/finetune_13b.py --workdir /mnt/disks/gcs/my-bucket/runs/ft13b \
#       --config.mesh.data=16 --config.mesh.fsdp=4
#
# Steps: (1) create the slice unless it exists (a PREEMPTED/TERMINATED one is deleted and
# created again); (2) copy this checkout (git archive of HEAD plus uncommitted tracked changes)
# to every worker and pip-install it with jax[tpu]; (3) optionally mount a GCS bucket with
# gcsfuse on every worker; (4) run `llava-jax train ARGS` on all workers at once. Every worker
# must see the same WORKDIR (checkpoints are written cooperatively, process 0 writes the
# synthetic data and metrics): use the gcsfuse mount, Filestore/NFS, or a gs:// path where
# the config's readers accept one. A run that ends because the slice was preempted is
# started again (up to MAX_RESTARTS) and resumes from the last checkpoint in WORKDIR.
#
# Environment (defaults in brackets):
#   TPU_NAME, ZONE                 required
#   PROJECT                        [gcloud's default project]
#   ACCELERATOR_TYPE               [v5p-8]  e.g. v5litepod-256, v5p-128, v6e-64
#   RUNTIME_VERSION                [from ACCELERATOR_TYPE: v2-alpha-tpuv5-lite, v2-alpha-tpuv5, v2-alpha-tpuv6e]
#   SPOT=1                         create a Spot slice (preemptible; restarts handled here)
#   SKIP_CREATE=1 / SKIP_INSTALL=1 reuse what is there
#   GCS_BUCKET                     gcsfuse-mount this bucket at /mnt/disks/gcs/$GCS_BUCKET on every worker
#   LIBTPU_INIT_ARGS               XLA TPU flags [async collective fusion, see below]
#   MAX_RESTARTS                   [3] re-create + resume after a preemption
#   REMOTE_DIR                     [llava_jax] directory in each worker's home
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5p-8}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"
REMOTE_DIR="${REMOTE_DIR:-llava_jax}"
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

if [[ $# -eq 0 ]]; then
  sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then where+=(--project="$PROJECT"); fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

state() {
  "${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state)' 2>/dev/null || true
}

created=0
create() {
  local current
  current="$(state)"
  case "$current" in
    READY) echo "tpu_pod.sh: reusing $TPU_NAME (READY)"; return ;;
    PREEMPTED|TERMINATED|STOPPED)
      echo "tpu_pod.sh: $TPU_NAME is $current; deleting and creating it again"
      "${gcloud_tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet ;;
    "") ;;
    *) echo "tpu_pod.sh: $TPU_NAME is $current; waiting for it"; sleep 60; create; return ;;
  esac
  local extra=()
  if [[ "${SPOT:-0}" == 1 ]]; then extra+=(--spot); fi
  echo "tpu_pod.sh: creating $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION)"
  "${gcloud_tpu[@]}" create "$TPU_NAME" "${where[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION" "${extra[@]}"
  created=1
}

on_all() {
  "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"
}

install() {
  local archive
  archive="$(mktemp "${TMPDIR:-/tmp}/llava_jax_src.XXXXXX.tar.gz")"
  # HEAD plus uncommitted changes to tracked files: what you see is what runs.
  (cd "$repo" && git ls-files -z | tar --null --ignore-failed-read -T - -czf "$archive")
  echo "tpu_pod.sh: copying the checkout to every worker"
  "${gcloud_tpu[@]}" scp "$archive" "$TPU_NAME:llava_jax_src.tar.gz" "${where[@]}" --worker=all
  rm -f "$archive"
  on_all "set -e; rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/llava_jax_src.tar.gz -C ~/$REMOTE_DIR \
    && python3 -m pip install -q --upgrade pip && python3 -m pip install -q -e ~/$REMOTE_DIR 'jax[tpu]==0.10.2'"
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
  # LLAVA_JAX_DISTRIBUTED=1: JAX's Cloud TPU detection finds the workers and the coordinator.
  on_all "cd ~/$REMOTE_DIR && LLAVA_JAX_DISTRIBUTED=1 LIBTPU_INIT_ARGS='$LIBTPU_INIT_ARGS' \
    python3 -m llava_jax.cli train $args"
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
  if [[ "$rc" -eq 0 ]]; then
    echo "tpu_pod.sh: training finished"
    exit 0
  fi
  current="$(state)"
  # 75: a process lost a peer (llava_jax.runtime.distributed); anything else on a healthy slice is a real error.
  if [[ "$current" == READY && "$rc" -ne 75 ]]; then
    echo "tpu_pod.sh: training failed (status $rc) on a healthy slice; not restarting" >&2
    exit "$rc"
  fi
  attempt=$((attempt + 1))
  if [[ "$attempt" -gt "$MAX_RESTARTS" ]]; then
    echo "tpu_pod.sh: slice is $current after $MAX_RESTARTS restarts; giving up" >&2
    exit "$rc"
  fi
  echo "tpu_pod.sh: slice is $current (status $rc); restart $attempt of $MAX_RESTARTS, resuming from the last checkpoint"
done
