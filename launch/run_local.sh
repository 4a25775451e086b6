#!/usr/bin/env bash
# Run mpitrans on this machine only, as N MPI processes.
#
#   bash launch/run_local.sh N [mpitrans arguments...]
#   bash launch/run_local.sh 4 --src-checkpoint out/checkpoint --src-strategy out/strategy \
#       --dst-checkpoint resharded --dst-strategy dst_strategy.ckpt
#   MPITRANS_DRY_RUN=1 bash launch/run_local.sh 4 --config transform.yaml   # print the command only
#
# Uses the venv's mpirun and python (.venv, see launch/setup_venv.sh) and launch/local_env.sh: allowed
# as root, more processes than cores (--oversubscribe), MPI traffic on the loopback interface only.
# --bind-to none: each process also runs a writer thread and numpy copies; pinning it to one core
# (Open MPI's default for small jobs) would make them compete for it.
#
# Environment: MPITRANS_DRY_RUN=1 prints the command instead of running it; MPIRUN / MPITRANS_PYTHON
# replace the venv's mpirun / python; MPIRUN_ARGS adds mpirun options (split on spaces).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") usage >&2; exit 2 ;;
esac
N="$1"
shift
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
    echo "run_local.sh: N must be a positive process count, got '$N' (see --help)" >&2
    exit 2
fi

source "$ROOT/launch/local_env.sh"
PY="${MPITRANS_PYTHON:-$ROOT/.venv/bin/python}"
MPIRUN="${MPIRUN:-$ROOT/.venv/bin/mpirun}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
read -r -a extra <<< "${MPIRUN_ARGS:-}"

cmd=("$MPIRUN" -n "$N" --oversubscribe --bind-to none ${extra[@]+"${extra[@]}"} "$PY" -m mpitrans "$@")
line="$(printf '%q ' "${cmd[@]}")"
if [ "${MPITRANS_DRY_RUN:-0}" = "1" ]; then
    echo "${line% }"
    exit 0
fi
echo "+ ${line% }" >&2
exec "${cmd[@]}"
