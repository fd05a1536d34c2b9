// Scheduler configuration: one struct, validated once, passed down by const reference.
#pragma once
#include <cstdint>
#include <string>

namespace pyserve {

enum class PreemptionMode : int8_t { kRecompute = 0, kSwap = 1 };

struct SchedulerConfig {
  // KV memory.
  int num_gpu_blocks = 1024;
  // Host pool: swap space for preempted calls and the host tier of the prefix cache (cached GPU
  // blocks the retention policy keeps move here when evicted). 0: neither (swap mode falls back
  // to recompute).
  int num_cpu_blocks = 0;
  int block_size = 16;  // tokens per block, a power of two
  bool enable_prefix_caching = true;
  // NOTE: test hook. Chained hashes are AND-ed with this mask; a small mask forces collisions so
  // tests can show that verification never aliases different tokens. Production keeps ~0.
  uint64_t prefix_hash_mask = ~uint64_t{0};

  // Batch limits (Sarathi-Serve token budget).
  int max_num_batched_tokens = 2048;
  int max_num_seqs = 256;
  int max_model_len = 4096;

  // Preemption.
  PreemptionMode preemption_mode = PreemptionMode::kRecompute;
  // Priority-driven (proactive) preemptions allowed per step when the batch is full.
  int max_preemptions_per_step = 4;
  // A request swapped in / admitted is not proactively preempted again for this many steps.
  int min_steps_between_preemptions = 8;

  // Policy and its parameters (lower key runs earlier everywhere).
  std::string policy = "fcfs";
  // Multi-level queues (mlfq, plas, atlas): queue i holds priorities in [B_i, B_i + quantum_i)
  // with quantum_i = quantum_base * quantum_growth^i seconds of service; the last is unbounded.
  // Defaults chosen by benchmarks/sweep_policy_defaults.py (Mixed, Llama-3.1-8B/H100 preset):
  // base 5 ms gave the best P99 for atlas and plas at 4 programs/s; beta 16 degrades to FCFS,
  // 64 and 256 tie on the mean and 256 has the better P99. See docs/simulator.md.
  int num_queues = 8;
  double quantum_base = 0.005;
  double quantum_growth = 2.0;
  // Anti-starvation: promote to the top queue when (program wait + call wait) /
  // (program service + call service) >= starvation_beta. <= 0 disables it.
  double starvation_beta = 256.0;
  // plas hybrid: order the first calls of programs (no completed call yet) inside their queue by
  // the learned-ranking score, shortest predicted first, instead of by arrival.
  bool plas_ltr_first_call = false;
  // Call-level tie-break: calls with equal primary keys (the same queue, the same Gittins rank)
  // run shortest predicted first by their ltr score instead of by arrival time (arrival order
  // stays the last tie-break). Any policy; it matters for the queued ones and gittins.
  bool ltr_tie_break = false;
  // gittins: size classes by the first call's ltr-score quantile (0: one pooled distribution).
  int gittins_classes = 4;
  // ltr: a request unscheduled for starve_steps consecutive steps runs at top priority for its
  // next starve_quantum steps.
  int starve_steps = 200;
  int starve_quantum = 10;
  // KV retention across a program's calls (csrc/retention/, docs/sessions.md): lru | ttl | program.
  std::string kv_retention = "lru";
  // ttl: a finished call of a live program pins its blocks for
  // min(retention_ttl_max_s, retention_ttl_scale * reload_s * free_fraction) seconds, where
  // reload_s = context tokens * retention_reload_s_per_token (the cost of re-prefilling it).
  double retention_ttl_max_s = 300.0;
  double retention_ttl_scale = 100.0;
  double retention_reload_s_per_token = 1e-4;
  // program: host-tier blocks of waiting calls copied back per step, ahead of admission.
  int retention_prefetch_blocks = 4096;
  // Program table: idle programs (no active call) are collected after this many seconds.
  double program_ttl_s = 600.0;
  // Cap on live programs: start_program beyond it throws ProgramTableFull (HTTP 429). 0: none.
  int64_t max_programs = 1000000;

  /// Throws std::invalid_argument naming the first bad field.
  void validate() const;
};

}  // namespace pyserve
