#!/usr/bin/env bash
# Create, set up, run, watch, stop and delete a Cloud TPU VM pod for unmask-jax.
#
#   launch/tpu_pod.sh VERB [options]
#
# Verbs (run them in this order; each prints the gcloud commands it runs):
#   create   make the TPU VM slice (directly, or through a queued resource)
#   setup    install jax[tpu] and this repository on every worker
#   run      start the same training command on every worker, in the
#            background, logging to ~/unmask_logs/worker_<N>.log on each worker
#   logs     show the tail of every worker's log (--follow, --fetch=DIR)
#   stop     send SIGTERM to the training process on every worker: like a
#            maintenance event, every process saves a checkpoint at the same
#            step and exits 0 (run again with the same --workdir to resume)
#   delete   delete the slice (or the queued resource and its slice)
#
# Options (a flag can also come from the environment variable in brackets):
#   --name=NAME                TPU / queued-resource name            [TPU_NAME]
#   --zone=ZONE                e.g. us-west4-a                       [TPU_ZONE]
#   --project=PROJECT          default: gcloud's configured project  [TPU_PROJECT]
#   --accelerator-type=TYPE    default v5litepod-16 (4 hosts x 4 chips)
#   --version=RUNTIME          TPU software version, default v2-alpha-tpuv5-lite
#                              (v6e: v2-alpha-tpuv6e; v4: tpu-ubuntu2204-base)
#   --spot                     Spot capacity (preemptible: keep checkpoints on gs://)
#   --queued                   create/delete through `queued-resources` (waits in
#                              the queue for capacity; recommended for large slices)
#   --valid-until=DURATION     queued only: give up after e.g. 6h
#   --workdir=gs://BUCKET/DIR  shared workdir (required for run; must be gs://)
#   --config=FILE[:ARGS]       config for `run`, e.g. configs/pix2pix.py:512
#   --extra="FLAGS"            extra flags appended to the training command
#   --repo=URL                 setup: git clone URL on every worker (default:
#                              copy a tarball of this checkout with scp)
#   --ref=REF                  setup: git ref to clone / archive (default HEAD)
#   --worker=all|N             which worker(s) `logs` reads (default all)
#   --follow                   logs: `tail -f` instead of the last lines
#   --fetch=DIR                logs: copy every worker's log into DIR instead
#   --dry-run                  print every command (prefixed "+ ") and run nothing
#
# Example: a v5e-16 pod (4 hosts) on Spot capacity
#   launch/tpu_pod.sh create --name=unmask --zone=us-west4-a --accelerator-type=v5litepod-16 --spot
#   launch/tpu_pod.sh setup  --name=unmask --zone=us-west4-a
#   launch/tpu_pod.sh run    --name=unmask --zone=us-west4-a \
#       --config=configs/pix2pix.py --workdir=gs://my-bucket/unmask/pix2pix
#   launch/tpu_pod.sh logs   --name=unmask --zone=us-west4-a --worker=0 --follow
#   launch/tpu_pod.sh stop   --name=unmask --zone=us-west4-a
#   launch/tpu_pod.sh delete --name=unmask --zone=us-west4-a
#
# Every worker runs the same command with --config.distributed.mode=auto:
# argument-less jax.distributed.initialize() reads the slice topology from the
# TPU VM metadata, so no coordinator address is passed.
#
# TPU7x and later (UNTESTED here): multi-host slices of these generations are
# not made with `gcloud compute tpus tpu-vm create`; they are created as
# Compute Engine managed instance groups (MIGs) or as GKE node pools (JobSet /
# XPK). The training command is the same (`python -m unmask_jax.main ...
# --config.distributed.mode=auto` on every host, gs:// workdir); only the
# provisioning and the "run on every host" step differ, and this script does
# not implement them. Nothing in this file has been run against real Cloud TPU
# from this repository's CI: the tests only check the --dry-run output.

set -euo pipefail

VERB="${1:-}"
if [[ -z "${VERB}" || "${VERB}" == "-h" || "${VERB}" == "--help" ]]; then
  sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
shift

NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
ACCELERATOR_TYPE="v5litepod-16"
VERSION="v2-alpha-tpuv5-lite"
SPOT=0
QUEUED=0
VALID_UNTIL=""
WORKDIR=""
CONFIG=""
EXTRA=""
REPO_URL=""
REF="HEAD"
WORKER="all"
FOLLOW=0
FETCH_DIR=""
DRY_RUN=0
REMOTE_DIR="unmask-jax"         # relative to the worker's home
LOG_DIR_REMOTE="unmask_logs"    # relative to the worker's home

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

for arg in "$@"; do
  case "${arg}" in
    --name=*) NAME="${arg#*=}" ;;
    --zone=*) ZONE="${arg#*=}" ;;
    --project=*) PROJECT="${arg#*=}" ;;
    --accelerator-type=*) ACCELERATOR_TYPE="${arg#*=}" ;;
    --version=*) VERSION="${arg#*=}" ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --valid-until=*) VALID_UNTIL="${arg#*=}" ;;
    --workdir=*) WORKDIR="${arg#*=}" ;;
    --config=*) CONFIG="${arg#*=}" ;;
    --extra=*) EXTRA="${arg#*=}" ;;
    --repo=*) REPO_URL="${arg#*=}" ;;
    --ref=*) REF="${arg#*=}" ;;
    --worker=*) WORKER="${arg#*=}" ;;
    --follow) FOLLOW=1 ;;
    --fetch=*) FETCH_DIR="${arg#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    *) die "unknown option '${arg}' (options take the form --flag=value; see --help)" ;;
  esac
done

[[ -n "${NAME}" ]] || die "--name=NAME (or TPU_NAME) is required"
[[ -n "${ZONE}" ]] || die "--zone=ZONE (or TPU_ZONE) is required"
[[ "${WORKER}" == "all" || "${WORKER}" =~ ^[0-9]+$ ]] || die "--worker must be 'all' or a number"

# Quote one word for display so that the printed line can be pasted into a shell.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Print a command ("+ ..."), then run it unless --dry-run.
run_cmd() {
  local line="+" word
  for word in "$@"; do line+=" $(quote "${word}")"; done
  echo "${line}"
  if [[ "${DRY_RUN}" -eq 0 ]]; then
    "$@"
  fi
}

GCLOUD_COMMON=(--zone="${ZONE}")
if [[ -n "${PROJECT}" ]]; then GCLOUD_COMMON+=(--project="${PROJECT}"); fi

ssh_workers() {  # ssh_workers WORKER COMMAND
  run_cmd gcloud compute tpus tpu-vm ssh "${NAME}" "${GCLOUD_COMMON[@]}" \
    --worker="$1" --command="$2"
}

# Shell snippet (run on a worker) that prints the worker's index in the slice.
WORKER_ID='$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'

do_create() {
  if [[ "${QUEUED}" -eq 1 ]]; then
    local args=(gcloud compute tpus queued-resources create "${NAME}" "${GCLOUD_COMMON[@]}"
                --node-id="${NAME}" --accelerator-type="${ACCELERATOR_TYPE}"
                --runtime-version="${VERSION}")
    if [[ "${SPOT}" -eq 1 ]]; then args+=(--spot); fi
    if [[ -n "${VALID_UNTIL}" ]]; then args+=(--valid-until-duration="${VALID_UNTIL}"); fi
    run_cmd "${args[@]}"
    echo "# queued: watch with"
    echo "#   gcloud compute tpus queued-resources describe ${NAME} --zone=${ZONE}"
    echo "# and run 'setup' once its state is ACTIVE."
  else
    [[ -z "${VALID_UNTIL}" ]] || die "--valid-until needs --queued"
    local args=(gcloud compute tpus tpu-vm create "${NAME}" "${GCLOUD_COMMON[@]}"
                --accelerator-type="${ACCELERATOR_TYPE}" --version="${VERSION}")
    if [[ "${SPOT}" -eq 1 ]]; then args+=(--spot); fi
    run_cmd "${args[@]}"
  fi
}

do_setup() {
  local install="pip install -U pip && pip install -U 'jax[tpu]' && cd ~/${REMOTE_DIR} && pip install -e '.[gcs]'"
  if [[ -n "${REPO_URL}" ]]; then
    ssh_workers all "rm -rf ~/${REMOTE_DIR} && git clone $(quote "${REPO_URL}") ~/${REMOTE_DIR} && cd ~/${REMOTE_DIR} && git checkout $(quote "${REF}") && ${install}"
  else
    local repo_root tarball
    repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    tarball="${TMPDIR:-/tmp}/unmask-jax-${NAME}.tar.gz"
    run_cmd git -C "${repo_root}" archive --format=tar.gz --output="${tarball}" "${REF}"
    run_cmd gcloud compute tpus tpu-vm scp "${tarball}" "${NAME}:unmask-jax.tar.gz" \
      "${GCLOUD_COMMON[@]}" --worker=all
    ssh_workers all "rm -rf ~/${REMOTE_DIR} && mkdir -p ~/${REMOTE_DIR} && tar -xzf ~/unmask-jax.tar.gz -C ~/${REMOTE_DIR} && ${install}"
  fi
}

do_run() {
  [[ -n "${WORKDIR}" ]] || die "run needs --workdir=gs://BUCKET/DIR (shared by all workers)"
  [[ "${WORKDIR}" == gs://* ]] || die "--workdir must be a gs:// path on a pod (every worker writes there), got '${WORKDIR}'"
  [[ -n "${CONFIG}" ]] || die "run needs --config=FILE[:ARGS]"
  local train="python3 -m unmask_jax.main --config=$(quote "${CONFIG}") --workdir=$(quote "${WORKDIR}") --config.distributed.mode=auto"
  if [[ -n "${EXTRA}" ]]; then train+=" ${EXTRA}"; fi
  local logs="~/${LOG_DIR_REMOTE}"
  # ';' (not '&&') before nohup so that only the python process is backgrounded
  # and $! is its pid (what `stop` signals).
  ssh_workers all "mkdir -p ${logs}; cd ~/${REMOTE_DIR} || exit 1; W=${WORKER_ID}; nohup ${train} > ${logs}/worker_\${W}.log 2>&1 < /dev/null & echo \$! > ${logs}/worker.pid; echo worker \${W} started pid \$(cat ${logs}/worker.pid)"
  echo "# follow with: $0 logs --name=${NAME} --zone=${ZONE} --worker=0 --follow"
}

do_logs() {
  local logs="~/${LOG_DIR_REMOTE}"
  if [[ -n "${FETCH_DIR}" ]]; then
    run_cmd mkdir -p "${FETCH_DIR}"
    run_cmd gcloud compute tpus tpu-vm scp "${NAME}:${LOG_DIR_REMOTE}/worker_*.log" "${FETCH_DIR}/" \
      "${GCLOUD_COMMON[@]}" --worker="${WORKER}"
  elif [[ "${FOLLOW}" -eq 1 ]]; then
    ssh_workers "${WORKER}" "tail -n 100 -F ${logs}/worker_*.log"
  else
    ssh_workers "${WORKER}" "tail -n 50 ${logs}/worker_*.log"
  fi
}

do_stop() {
  local logs="~/${LOG_DIR_REMOTE}"
  ssh_workers all "if [ -f ${logs}/worker.pid ]; then kill -TERM \$(cat ${logs}/worker.pid) 2>/dev/null && echo sent SIGTERM || echo not running; rm -f ${logs}/worker.pid; fi"
}

do_delete() {
  if [[ "${QUEUED}" -eq 1 ]]; then
    run_cmd gcloud compute tpus queued-resources delete "${NAME}" "${GCLOUD_COMMON[@]}" --force --quiet
  else
    run_cmd gcloud compute tpus tpu-vm delete "${NAME}" "${GCLOUD_COMMON[@]}" --quiet
  fi
}

case "${VERB}" in
  create) do_create ;;
  setup) do_setup ;;
  run) do_run ;;
  logs) do_logs ;;
  stop) do_stop ;;
  delete) do_delete ;;
  *) die "unknown verb '${VERB}': use create | setup | run | logs | stop | delete" ;;
esac
