#include "pyserve/config.h"

#include <stdexcept>
#include <string>

#include "pyserve/policy.h"
#include "pyserve/retention.h"
#include "pyserve/service_distribution.h"
#include "pyserve/types.h"

namespace pyserve {

namespace {
void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("invalid scheduler config: " + msg);
}
}  // namespace

void SchedulerConfig::validate() const {
  require(num_gpu_blocks > 0, "num_gpu_blocks must be > 0, got " + std::to_string(num_gpu_blocks));
  require(num_cpu_blocks >= 0, "num_cpu_blocks must be >= 0");
  require(block_size > 0 && (block_size & (block_size - 1)) == 0,
          "block_size must be a power of two, got " + std::to_string(block_size));
  require(max_num_batched_tokens >= 1, "max_num_batched_tokens must be >= 1");
  require(max_num_seqs >= 1, "max_num_seqs must be >= 1");
  require(max_model_len >= 1, "max_model_len must be >= 1");
  require(int64_t(num_gpu_blocks) * block_size >= max_model_len,
          "num_gpu_blocks * block_size (" + std::to_string(int64_t(num_gpu_blocks) * block_size) +
              ") must hold one request of max_model_len (" + std::to_string(max_model_len) + ")");
  require(max_preemptions_per_step >= 0, "max_preemptions_per_step must be >= 0");
  require(min_steps_between_preemptions >= 0, "min_steps_between_preemptions must be >= 0");
  require(num_queues >= 1, "num_queues must be >= 1");
  require(quantum_base > 0.0, "quantum_base must be > 0");
  require(quantum_growth >= 1.0, "quantum_growth must be >= 1");
  require(starve_steps >= 1 && starve_quantum >= 1, "starve_steps and starve_quantum must be >= 1");
  require(
      gittins_classes >= 0 && gittins_classes <= ServiceDistribution::kMaxClasses,
      "gittins_classes must be in [0, " + std::to_string(ServiceDistribution::kMaxClasses) + "]");
  require(program_ttl_s > 0.0, "program_ttl_s must be > 0");
  require(max_programs >= 0, "max_programs must be >= 0 (0: no cap)");
  require(retention_ttl_max_s >= 0.0 && retention_ttl_scale >= 0.0 &&
              retention_reload_s_per_token >= 0.0,
          "retention_ttl_max_s, retention_ttl_scale, retention_reload_s_per_token must be >= 0");
  require(retention_prefetch_blocks >= 0, "retention_prefetch_blocks must be >= 0");
  bool known_retention = false;
  for (const auto& n : retention_names()) known_retention |= n == kv_retention;
  require(known_retention, "unknown kv_retention '" + kv_retention + "'");
  bool known = false;
  for (const auto& n : policy_names()) known |= n == policy;
  require(known, "unknown policy '" + policy + "'");
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
    default:
      return "none";
  }
}

const char* status_name(Status s) {
  switch (s) {
    case Status::kWaiting:
      return "waiting";
    case Status::kRunning:
      return "running";
    case Status::kSwapped:
      return "swapped";
    default:
      return "finished";
  }
}

}  // namespace pyserve
