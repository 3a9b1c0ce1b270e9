// Data-parallel training's communication: N processes (ranks) that each hold the whole model
// and a part of every batch sum their gradients, losses and flags here. Backends: one process
// (the default, no library), MPI (host memory; device buffers are staged through the host), and
// NCCL (device buffers on CUDA, its unique id passed through the host communicator).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/error.h"
#include "core/storage.h"

namespace kvc::dist {

// An error that every rank raises at the same point with its own message (settings that differ
// between ranks, parameters that differ): the ranks end normally, none has to be killed.
class CollectiveError : public Error {
 public:
  explicit CollectiveError(const std::string& msg) : Error(msg) {}
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The rank among the processes on this machine: the GPU this rank takes.
  virtual int local_rank() const = 0;
  virtual std::string name() const = 0;  // "one process", "MPI", "NCCL"

  // Sums `count` floats at `data` over all ranks, in place; `data` is memory of `device`.
  virtual void allreduce_sum(float* data, int64_t count, Device device) = 0;
  // Sums host doubles (losses, flags) over all ranks, in place.
  virtual void allreduce_sum(double* data, int64_t count) = 0;
  // Copies `bytes` of host memory from rank `root` to every rank.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Ends every rank now with `code` (the error path of one rank: the others must not wait).
  [[noreturn]] virtual void abort(int code) = 0;

  bool is_root() const { return rank() == 0; }
  // True for single_process(): no library behind it, so callers may skip the collectives (an MPI
  // or NCCL world of one rank still runs them, which tests that path on one GPU).
  virtual bool no_library() const { return false; }
};

// This process alone: every collective is the identity.
std::shared_ptr<Communicator> single_process();

// The world of this process: MPI_COMM_WORLD when kvcompress was built with MPI and started by an
// MPI launcher (mpirun, srun with PMI), else one process. init_world starts MPI then (once, from
// main, before anything else); finalize_world ends it. world() is single_process() until then.
void init_world(int* argc, char*** argv);
void finalize_world();
Communicator& world();
std::shared_ptr<Communicator> world_ptr();
bool built_with_mpi();
bool built_with_nccl();

// What sums a rank's gradients on `device`: NCCL for CUDA ranks where kvcompress was built with
// it (over world(), or, with KVC_NCCL=1 and one process, a world of one made locally: a test of
// NCCL without MPI); KVC_NCCL=0 or no NCCL: world(), which copies CUDA buffers through the host
// (a warning says so when there are several ranks). CPU ranks: world().
std::shared_ptr<Communicator> gradient_communicator(Device device);

// True on every rank when `flag` is true on any.
bool any_rank(Communicator& comm, bool flag);

// Throws CollectiveError on every rank (each with its own one-line message) unless `mine` equals
// rank 0's. `what` names the value ("settings", "initial parameters"); `mine` is a
// comma-separated description whose first differing item the message quotes.
void require_same_on_all(Communicator& comm, const std::string& what, const std::string& mine);

// A 64-bit FNV-1a fingerprint of `bytes` bytes (host memory).
uint64_t fingerprint(const void* data, size_t bytes);

// Makes GPU `local_rank` this process's current device (before any CUDA work): throws naming the
// rank when this machine has fewer GPUs or the GPU cannot be used (busy in exclusive mode).
void select_gpu(const Communicator& comm);
// The device of this rank of world(): `requested` itself with one process or on the CPU, else
// the GPU of its local rank (made current by select_gpu).
Device rank_device(Device requested);

}  // namespace kvc::dist
