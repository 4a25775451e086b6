# Sourced by the launch scripts: lets Open MPI run as root (containers, CI). Harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
