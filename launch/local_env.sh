# Sourced for single-machine runs (quickstart, run_local.sh, tests): as root, more processes than
# cores, and MPI traffic kept on the loopback interface. Do not source this for multi-node jobs.
source "$(dirname "${BASH_SOURCE[0]}")/mpi_env.sh"
export OMPI_MCA_btl_tcp_if_include="${OMPI_MCA_btl_tcp_if_include:-lo}"
