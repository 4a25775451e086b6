#!/usr/bin/env bash
# Run mpitrans on the servers of an HCCL rank table, one process per device, each target rank written
# on the server that holds it in the table.
#
#   bash launch/run_rank_table.sh RANK_TABLE [mpitrans arguments...]
#   bash launch/run_rank_table.sh rank_table_16.json --config transform.yaml
#   MPITRANS_DRY_RUN=1 bash launch/run_rank_table.sh rank_tables/hccl_8p_01234567_127.0.0.1.json ...
#
# The hostfile and -n come from the table (`python -m mpitrans rank-table hostfile`: one line per
# server, slots = its devices), and `--rank-table RANK_TABLE` (absolute path) is appended to the
# mpitrans arguments. The table must be at that path on every node, like the merged table MindFormers
# copies to all machines.
#
# Single machine: when every server of the table is this machine (its host name, an address of one of
# its interfaces, 127.0.0.1 or localhost; MPITRANS_SERVER_ID overrides), the job starts through
# launch/run_local.sh instead: no hostfile, --oversubscribe, loopback-only MPI (local_env.sh). That is
# how example tables such as rank_tables/hccl_8p_01234567_127.0.0.1.json run on a laptop or in CI.
# Otherwise it goes through launch/run_hostfile.sh (multi-node Open MPI; see its --help for MPICH).
#
# Environment: MPITRANS_DRY_RUN=1 prints the command instead of running it (passed on to the script
# it calls); MPITRANS_PYTHON replaces the venv's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") usage >&2; exit 2 ;;
esac
TABLE="$1"
shift
if [ ! -r "$TABLE" ]; then
    echo "run_rank_table.sh: cannot read rank table '$TABLE'" >&2
    exit 2
fi
TABLE="$(cd "$(dirname "$TABLE")" && pwd)/$(basename "$TABLE")"
PY="${MPITRANS_PYTHON:-$ROOT/.venv/bin/python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

HOSTFILE="$(mktemp "${TMPDIR:-/tmp}/mpitrans_hostfile.XXXXXX")"
trap 'rm -f "$HOSTFILE"' EXIT
# `python -m mpitrans.cluster` is `python -m mpitrans rank-table` without the transform's CLI.
"$PY" -m mpitrans.cluster hostfile "$TABLE" -o "$HOSTFILE" >/dev/null
NP="$(awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, b, "="); t += b[2] } } END { print t + 0 }' \
    "$HOSTFILE")"

if [ "${MPITRANS_DRY_RUN:-0}" = "1" ]; then
    # The temporary hostfile is removed on exit: show what it held.
    sed 's/^/# hostfile: /' "$HOSTFILE"
fi
if "$PY" -m mpitrans.cluster is-local "$TABLE" >/dev/null; then
    echo "[run_rank_table] every server of $TABLE is this machine: $NP local processes" >&2
    bash "$ROOT/launch/run_local.sh" "$NP" "$@" --rank-table "$TABLE"
else
    echo "[run_rank_table] $NP processes on: $(awk '{printf "%s%s", sep, $1; sep=", "}' "$HOSTFILE")" >&2
    bash "$ROOT/launch/run_hostfile.sh" "$HOSTFILE" "$@" --rank-table "$TABLE"
fi
