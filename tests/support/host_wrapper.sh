#!/usr/bin/env bash
# Run one MPI rank as if on its own host: a private mount namespace where the rank's host directory is
# bind-mounted onto a path every rank uses. Two ranks of different "hosts" then see different files at
# the same path, like nodes without a shared disk.
#   MPITRANS_TEST_MOUNT   the common path (an existing empty directory)
#   MPITRANS_TEST_HOSTS   comma-separated host directory per MPI rank, e.g. "/t/hostA,/t/hostA,/t/hostB"
set -euo pipefail
rank="${OMPI_COMM_WORLD_RANK:?not launched by Open MPI}"
IFS=',' read -r -a hosts <<< "${MPITRANS_TEST_HOSTS:?}"
host="${hosts[$rank]}"
export MPITRANS_SERVER_ID="$(basename "$host")"
exec unshare -m --propagation private bash -c 'mount --bind "$0" "$1" && exec "${@:2}"' \
    "$host" "${MPITRANS_TEST_MOUNT:?}" "$@"
