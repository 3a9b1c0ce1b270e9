// The NCCL backend: CUDA buffers are summed by NCCL on kvcompress's stream (so the sum is ordered
// after the backward that wrote them and before the clip that reads them, with no host wait);
// host collectives go to the communicator that passed the unique id (MPI, or one process).
#include <nccl.h>

#include <cstdlib>

#include "dist/backends.h"
#include "kernels/cuda/common.cuh"

namespace kvc::dist::detail {

namespace {

void check_nccl(ncclResult_t r, const char* call) {
  KVC_CHECK(r == ncclSuccess, "NCCL: ", call, " failed: ", ncclGetErrorString(r));
}

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(std::shared_ptr<Communicator> host) : host_(std::move(host)) {
    ncclUniqueId id{};
    if (host_->is_root()) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    host_->broadcast(&id, sizeof(id), 0);
    check_nccl(ncclCommInitRank(&comm_, host_->size(), id, host_->rank()), "ncclCommInitRank");
  }
  ~NcclCommunicator() override {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
  }
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  int local_rank() const override { return host_->local_rank(); }
  std::string name() const override { return "NCCL"; }

  void allreduce_sum(float* data, int64_t count, Device device) override {
    if (!device.is_cuda()) {
      host_->allreduce_sum(data, count, device);
      return;
    }
    check_nccl(ncclAllReduce(data, data, static_cast<size_t>(count), ncclFloat, ncclSum, comm_,
                             kernels::cuda::stream()),
               "ncclAllReduce");
  }
  void allreduce_sum(double* data, int64_t count) override { host_->allreduce_sum(data, count); }
  void broadcast(void* data, int64_t bytes, int root) override {
    host_->broadcast(data, bytes, root);
  }
  void barrier() override { host_->barrier(); }
  [[noreturn]] void abort(int code) override {
    ncclCommAbort(comm_);  // no NCCL kernel keeps waiting for a rank that is gone
    comm_ = nullptr;
    host_->abort(code);
    std::_Exit(code);  // not reached: the host communicator ends the process
  }

 private:
  std::shared_ptr<Communicator> host_;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::shared_ptr<Communicator> make_nccl(std::shared_ptr<Communicator> host) {
  return std::make_shared<NcclCommunicator>(std::move(host));
}

}  // namespace kvc::dist::detail
