// The MPI backend: MPI_COMM_WORLD, host-memory collectives; CUDA buffers are copied through the
// host (NCCL is the fast path for them).
// Only the C API: Open MPI and MPICH would otherwise pull in their deprecated C++ bindings.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "dist/backends.h"

namespace kvc::dist::detail {

namespace {

void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  KVC_FAIL("MPI: ", call, " failed: ", std::string(text, static_cast<size_t>(length)));
}

// MPI counts are int: larger buffers go in pieces.
template <typename T, typename Fn>
void in_pieces(T* data, int64_t count, Fn fn) {
  for (int64_t done = 0; done < count;) {
    const int piece = static_cast<int>(std::min<int64_t>(count - done, INT_MAX));
    fn(data + done, piece);
    done += piece;
  }
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    MPI_Comm node = MPI_COMM_NULL;
    check_mpi(
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
        "MPI_Comm_split_type");
    check_mpi(MPI_Comm_rank(node, &local_rank_), "MPI_Comm_rank");
    MPI_Comm_free(&node);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  std::string name() const override { return "MPI"; }

  void allreduce_sum(float* data, int64_t count, Device device) override {
    if (device.is_cpu()) {
      in_pieces(data, count, [](float* p, int n) {
        check_mpi(MPI_Allreduce(MPI_IN_PLACE, p, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
                  "MPI_Allreduce");
      });
      return;
    }
    staging_.resize(static_cast<size_t>(count));
    const size_t bytes = static_cast<size_t>(count) * sizeof(float);
    copy_bytes(staging_.data(), Device::cpu(), data, device, bytes);
    allreduce_sum(staging_.data(), count, Device::cpu());
    copy_bytes(data, device, staging_.data(), Device::cpu(), bytes);
  }
  void allreduce_sum(double* data, int64_t count) override {
    in_pieces(data, count, [](double* p, int n) {
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, p, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
                "MPI_Allreduce");
    });
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    in_pieces(static_cast<char*>(data), bytes, [root](char* p, int n) {
      check_mpi(MPI_Bcast(p, n, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    });
  }
  void barrier() override { check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; in case it does
  }

 private:
  int rank_ = 0, size_ = 1, local_rank_ = 0;
  std::vector<float> staging_;  // host copy of a CUDA buffer
};

bool mpi_started = false;

}  // namespace

std::shared_ptr<Communicator> start_mpi(int* argc, char*** argv) {
  int provided = 0;
  check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  mpi_started = true;
  // Errors come back as codes, so the message names the call (then the error path aborts).
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  return std::make_shared<MpiCommunicator>();
}

void stop_mpi() {
  if (!mpi_started) return;
  mpi_started = false;
  MPI_Finalize();
}

}  // namespace kvc::dist::detail
