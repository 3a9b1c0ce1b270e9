// Data-parallel hooks of the trainer: agreement checks, the gradient sum, loss averages.
#include "train/data_parallel.h"

#include "core/autograd.h"
#include "core/ops.h"
#include "train/trainer.h"

namespace kvc::train {

std::string rank_settings_line(const TrainOptions& o) {
  std::string line;
  for (const Setting& s : settings_table()) {
    line += (line.empty() ? "" : ", ") + std::string(s.name) + " " + setting_text(o, s);
  }
  return str(line, ", device ", o.device.is_cuda() ? "cuda" : "cpu", ", resume '", o.resume,
             "', cuda_graph ", o.cuda_graph, ", patience ", o.patience, ", save_best ",
             o.save_best);
}

void check_ranks_agree(dist::Communicator& comm, const TrainOptions& o, const Adam& adam) {
  if (comm.size() == 1) return;
  dist::require_same_on_all(comm, "settings", rank_settings_line(o));
  const Tensor params = adam.flat_params().to(Device::cpu());
  const uint64_t print = dist::fingerprint(params.raw_data(), params.nbytes());
  dist::require_same_on_all(
      comm, "initial parameters",
      str("fingerprint ", std::hex, print, " of ", std::dec, adam.numel(), " values"));
}

std::function<void()> gradient_reducer(dist::Communicator& comm, Adam& adam) {
  if (comm.no_library()) return {};
  return [&comm, &adam] {
    KVC_CHECK(adam.dtype() == DType::f32, "train: data-parallel gradients must be float32, not ",
              dtype_name(adam.dtype()));
    NoGradGuard no_grad;
    for (Tensor& grads : adam.grad_segments()) {  // one all-reduce per gradient segment
      comm.allreduce_sum(grads.data<float>(), grads.numel(), grads.device());
      grads.copy_from(scale(grads, 1.0 / comm.size()));
    }
  };
}

void average_losses_over_ranks(dist::Communicator& comm, std::vector<StepRecord>& steps) {
  if (comm.size() == 1 || steps.empty()) return;
  std::vector<double> losses;
  for (const StepRecord& r : steps) losses.push_back(r.loss);
  comm.allreduce_sum(losses.data(), static_cast<int64_t>(losses.size()));
  for (size_t i = 0; i < steps.size(); ++i) steps[i].loss = losses[i] / comm.size();
}

}  // namespace kvc::train
