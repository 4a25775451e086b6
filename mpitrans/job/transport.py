"""Moving bytes between processes: a deliberately tiny interface over MPI.

The engine needs only a handful of operations: agree on small metadata (broadcast, all-gather of byte
strings), exchange planned buffers point to point, and end the whole job at once. Everything travels as
raw buffers through mpi4py's uppercase methods, never as pickled objects, and large messages are cut
below MPI's 2 GiB element-count limit. `LocalTransport` implements the same interface for a single
process so the library works (and is tested) without any MPI launch.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

# Open MPI counts are C ints; stay well below 2**31 elements per message.
MAX_MESSAGE = 1 << 30


class Transport(Protocol):
    rank: int
    size: int

    def bcast_bytes(self, data: bytes | None, root: int = 0) -> bytes: ...

    def allgather_bytes(self, data: bytes) -> list[bytes]: ...

    def exchange(self, sends: Sequence[tuple[int, memoryview]], recvs: Sequence[tuple[int, memoryview]]) -> None: ...

    def alltoall_bytes(self, data: Sequence[bytes]) -> list[bytes]: ...

    def wait_for_peers(self, timeout: float) -> bool: ...

    def abort(self, code: int = 1) -> None: ...


class LocalTransport:
    """A job of one process: collectives are identities and no peer exists to exchange with."""

    rank = 0
    size = 1

    def bcast_bytes(self, data: bytes | None, root: int = 0) -> bytes:
        assert data is not None
        return bytes(data)

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        return [bytes(data)]

    def exchange(self, sends, recvs) -> None:
        if sends or recvs:
            raise RuntimeError("a one-process job has no peers to exchange with")

    def alltoall_bytes(self, data: Sequence[bytes]) -> list[bytes]:
        return [bytes(data[0])]

    def wait_for_peers(self, timeout: float) -> bool:
        return True

    def abort(self, code: int = 1) -> None:
        sys.stderr.flush()
        os._exit(code)


def _pieces(buf: memoryview) -> list[memoryview]:
    return [buf[i:i + MAX_MESSAGE] for i in range(0, len(buf), MAX_MESSAGE)] or [buf]


class MPITransport:
    """Transport over an mpi4py communicator (a duplicate, so our tags never meet the caller's)."""

    def __init__(self, comm) -> None:
        self.comm = comm.Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._tag = 0

    def bcast_bytes(self, data: bytes | None, root: int = 0) -> bytes:
        from mpi4py import MPI

        n = np.array([len(data) if self.rank == root else 0], dtype=np.int64)
        self.comm.Bcast([n, MPI.INT64_T], root=root)
        buf = bytearray(data) if self.rank == root else bytearray(int(n[0]))
        for piece in _pieces(memoryview(buf)):
            self.comm.Bcast([piece, MPI.BYTE], root=root)
        return bytes(buf)

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        from mpi4py import MPI

        sizes = np.zeros(self.size, dtype=np.int64)
        self.comm.Allgather([np.array([len(data)], dtype=np.int64), MPI.INT64_T], [sizes, MPI.INT64_T])
        if int(sizes.sum()) < MAX_MESSAGE:
            out = bytearray(int(sizes.sum()))
            displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
            self.comm.Allgatherv([bytes(data), MPI.BYTE], [out, (sizes.tolist(), displs.tolist()), MPI.BYTE])
            return [bytes(out[d:d + s]) for d, s in zip(displs.tolist(), sizes.tolist(), strict=True)]
        return [self.bcast_bytes(data if r == self.rank else None, root=r) for r in range(self.size)]

    def wait_for_peers(self, timeout: float) -> bool:
        """True once every rank got here (a non-blocking barrier), False if one did not within `timeout`."""
        request = self.comm.Ibarrier()
        deadline = time.monotonic() + timeout
        while not request.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def alltoall_bytes(self, data: Sequence[bytes]) -> list[bytes]:
        """`data[r]` goes to rank r; returns what each rank sent to this one (requests, replies, indexes).
        Sizes first, then the payloads point to point, each cut below the 2 GiB count limit."""
        from mpi4py import MPI

        out_sizes = np.array([len(d) for d in data], dtype=np.int64)
        in_sizes = np.zeros(self.size, dtype=np.int64)
        self.comm.Alltoall([out_sizes, MPI.INT64_T], [in_sizes, MPI.INT64_T])
        inbox = [bytearray(int(n)) for n in in_sizes]
        sends = [(r, memoryview(bytes(d))) for r, d in enumerate(data) if r != self.rank and len(d)]
        recvs = [(r, memoryview(inbox[r])) for r in range(self.size) if r != self.rank and in_sizes[r]]
        self.exchange(sends, recvs)
        inbox[self.rank] = bytearray(data[self.rank])
        return [bytes(b) for b in inbox]

    def exchange(self, sends, recvs) -> None:
        """Post every receive and send of one round, then wait for all: no ordering can deadlock."""
        from mpi4py import MPI

        self._tag = (self._tag + 1) % 30000
        base = self._tag * 16
        requests = []
        for peer, buf in recvs:
            for i, piece in enumerate(_pieces(buf)):
                requests.append(self.comm.Irecv([piece, MPI.BYTE], source=peer, tag=base % 32000 + i))
        for peer, buf in sends:
            for i, piece in enumerate(_pieces(buf)):
                requests.append(self.comm.Isend([piece, MPI.BYTE], dest=peer, tag=base % 32000 + i))
        MPI.Request.Waitall(requests)

    def abort(self, code: int = 1) -> None:
        sys.stderr.flush()
        sys.stdout.flush()
        self.comm.Abort(code)


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (so COMM_WORLD may hold peers)."""
    keys = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS")
    return any(k in os.environ for k in keys)


def tune_single_node_open_mpi(environ: dict | None = None) -> None:
    """When every rank of an Open MPI job is on this node, skip probing the fabric libraries (libfabric,
    UCX): that probe costs about a second per process at MPI_Init, and shared memory is all a single node
    needs. Only fills in what the user did not choose (any OMPI_MCA_pml/btl/mtl, including one given by
    `mpirun --mca`, wins); `MPITRANS_MPI_TUNING=0` turns it off. Must run before mpi4py.MPI is imported."""
    env = os.environ if environ is None else environ
    if env.get("MPITRANS_MPI_TUNING", "1") == "0" or "mpi4py.MPI" in sys.modules:
        return
    local, world = env.get("OMPI_COMM_WORLD_LOCAL_SIZE"), env.get("OMPI_COMM_WORLD_SIZE")
    if not local or local != world:
        return
    if not any(k in env for k in ("OMPI_MCA_pml", "OMPI_MCA_btl", "OMPI_MCA_mtl")):
        env["OMPI_MCA_pml"] = "ob1"
        env["OMPI_MCA_btl"] = "self,sm,tcp"


def make_transport(comm=None) -> Transport:
    """`comm` may be an mpi4py communicator, a Transport, or None (COMM_WORLD under mpirun, else local)."""
    if comm is None:
        if not launched_by_mpi():
            return LocalTransport()
        tune_single_node_open_mpi()
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    if hasattr(comm, "exchange") and hasattr(comm, "allgather_bytes"):
        return comm
    if comm.Get_size() == 1:
        return LocalTransport()
    return MPITransport(comm)


def abort_process(code: int) -> None:
    """End this process, and under MPI the whole job (a peer may wait in a collective for this one), even
    before any transport exists."""
    sys.stderr.flush()
    sys.stdout.flush()
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.COMM_WORLD.Abort(code)
    os._exit(code)
