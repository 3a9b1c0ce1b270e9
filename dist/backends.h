// The MPI and NCCL backends of dist/communicator.h, each compiled only where its library was
// found at configure time (KVC_WITH_MPI, KVC_WITH_NCCL).
#pragma once

#include <memory>

#include "dist/communicator.h"

namespace kvc::dist::detail {

#ifdef KVC_WITH_MPI
// MPI_Init_thread and MPI_COMM_WORLD; MPI errors return codes (each call checks and throws).
std::shared_ptr<Communicator> start_mpi(int* argc, char*** argv);
void stop_mpi();  // MPI_Finalize, when start_mpi ran
#endif

#ifdef KVC_WITH_NCCL
// A NCCL communicator over the ranks of `host` (rank 0 makes the unique id, `host` broadcasts
// it); host-memory collectives go to `host`. The current CUDA device must be the rank's GPU.
std::shared_ptr<Communicator> make_nccl(std::shared_ptr<Communicator> host);
#endif

}  // namespace kvc::dist::detail
