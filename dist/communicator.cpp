// The one-process communicator, the process's world, and the checks every backend shares.
#include "dist/communicator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dist/backends.h"
#include "kernels/memory.h"

#ifdef KVC_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kvc::dist {

namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string name() const override { return "one process"; }
  void allreduce_sum(float*, int64_t, Device) override {}
  void allreduce_sum(double*, int64_t) override {}
  void broadcast(void*, int64_t, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::_Exit(code); }
  bool no_library() const override { return true; }
};

std::shared_ptr<Communicator>& world_slot() {
  static std::shared_ptr<Communicator> w = single_process();
  return w;
}

// Set by the launchers that start MPI ranks: Open MPI's mpirun, MPICH/Hydra, PMI and PMIx
// (srun, many schedulers).
bool started_by_mpi_launcher() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

// The first comma-separated item where `a` and `b` differ (whole strings when one is shorter).
std::string first_difference(const std::string& a, const std::string& b, std::string* theirs) {
  size_t i = 0, j = 0;
  while (i <= a.size() && j <= b.size()) {
    const size_t ie = std::min(a.find(", ", i), a.size());
    const size_t je = std::min(b.find(", ", j), b.size());
    const std::string x = a.substr(i, ie - i), y = b.substr(j, je - j);
    if (x != y) {
      *theirs = y;
      return x;
    }
    i = ie + 2;
    j = je + 2;
  }
  *theirs = b;
  return a;
}

}  // namespace

std::shared_ptr<Communicator> single_process() { return std::make_shared<SingleProcess>(); }

bool built_with_mpi() {
#ifdef KVC_WITH_MPI
  return true;
#else
  return false;
#endif
}

bool built_with_nccl() {
#ifdef KVC_WITH_NCCL
  return true;
#else
  return false;
#endif
}

void init_world(int* argc, char*** argv) {
#ifdef KVC_WITH_MPI
  if (started_by_mpi_launcher()) world_slot() = detail::start_mpi(argc, argv);
#else
  (void)argc;
  (void)argv;
#endif
}

void finalize_world() {
#ifdef KVC_WITH_MPI
  if (world_slot()->name() == "MPI") {
    world_slot() = single_process();
    detail::stop_mpi();
  }
#endif
}

Communicator& world() { return *world_slot(); }
std::shared_ptr<Communicator> world_ptr() { return world_slot(); }

std::shared_ptr<Communicator> gradient_communicator(Device device) {
  const std::shared_ptr<Communicator> w = world_ptr();
  if (!device.is_cuda()) return w;
  const char* env = std::getenv("KVC_NCCL");
  const std::string choice = env != nullptr ? env : "";
  KVC_CHECK(choice.empty() || choice == "0" || choice == "1", "KVC_NCCL is '", choice,
            "'; expected 0 (gradients through MPI) or 1 (through NCCL)");
#ifdef KVC_WITH_NCCL
  if (choice == "1" || (choice.empty() && w->size() > 1)) return detail::make_nccl(w);
#else
  KVC_CHECK(choice != "1", "KVC_NCCL=1 but kvcompress was built without NCCL");
#endif
  if (w->size() > 1 && w->is_root()) {
    spdlog::warn(
        "the {} ranks sum their CUDA gradients through host memory and MPI ({}): slower than "
        "NCCL",
        w->size(), built_with_nccl() ? "KVC_NCCL=0" : "kvcompress was built without NCCL");
  }
  return w;
}

bool any_rank(Communicator& comm, bool flag) {
  if (comm.size() == 1) return flag;
  double v = flag ? 1.0 : 0.0;
  comm.allreduce_sum(&v, 1);
  return v > 0;
}

void require_same_on_all(Communicator& comm, const std::string& what, const std::string& mine) {
  if (comm.size() == 1) return;
  int64_t length = static_cast<int64_t>(mine.size());
  comm.broadcast(&length, sizeof(length), 0);
  std::string root(static_cast<size_t>(length), '\0');
  if (comm.is_root()) root = mine;
  comm.broadcast(root.data(), length, 0);
  const bool differs = root != mine;
  double differing = differs ? 1.0 : 0.0;
  comm.allreduce_sum(&differing, 1);
  if (differing == 0) return;
  if (differs) {
    std::string theirs;
    const std::string item = first_difference(mine, root, &theirs);
    throw CollectiveError(str("rank ", comm.rank(), " of ", comm.size(), " was started with other ",
                              what, " than rank 0: '", item, "' here, '", theirs,
                              "' on rank 0 (every rank must get the same flags)"));
  }
  throw CollectiveError(str(static_cast<int64_t>(differing), " of the ", comm.size(),
                            " ranks were started with other ", what, " than rank 0 (", what,
                            " here: ", mine, ")"));
}

uint64_t fingerprint(const void* data, size_t bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

void select_gpu(const Communicator& comm) {
#ifdef KVC_WITH_CUDA
  const char* why = nullptr;
  const int count = kernels::cuda::device_count(&why);
  const int gpu = comm.local_rank();
  KVC_CHECK(gpu < count, "rank ", comm.rank(), " (local rank ", gpu, ") needs GPU ", gpu,
            " but this machine has ", count, " GPU(s)", why != nullptr ? str(" (", why, ")") : "",
            ": start at most ", count, " ranks per machine");
  cudaError_t e = cudaSetDevice(gpu);
  if (e == cudaSuccess) e = cudaFree(nullptr);  // creates the context: a busy GPU says so here
  KVC_CHECK(e == cudaSuccess, "rank ", comm.rank(), " cannot use GPU ", gpu, ": ",
            cudaGetErrorString(e), " (busy in exclusive mode, or failed)");
#else
  KVC_FAIL("rank ", comm.rank(), ": this kvcompress was built without CUDA");
#endif
}

Device rank_device(Device requested) {
  Communicator& w = world();
  if (!requested.is_cuda() || w.size() == 1) return requested;
  select_gpu(w);
  return Device::cuda(w.local_rank());
}

}  // namespace kvc::dist
