// pybind11 glue for the C++ core. No logic here: conversions only. The GIL is released around
// schedule() and update(); StepPlan arrays are zero-copy numpy views owned by the scheduler.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "pyserve/block_allocator.h"
#include "pyserve/scheduler.h"
#include "pyserve/token_ids.h"

namespace py = pybind11;
using namespace pyserve;

namespace {

template <typename T>
py::array_t<T> view(const std::vector<T>& v, py::handle owner, ssize_t cols = 1) {
  if (cols == 1) return py::array_t<T>({ssize_t(v.size())}, {ssize_t(sizeof(T))}, v.data(), owner);
  return py::array_t<T>({ssize_t(v.size()) / cols, cols},
                        {ssize_t(sizeof(T) * cols), ssize_t(sizeof(T))}, v.data(), owner);
}

#define PLAN_ARRAY(name) \
  def_property_readonly( \
      #name, [](py::object self) { return view(self.cast<const StepPlan&>().name, self); })
#define PLAN_PAIRS(name) \
  def_property_readonly( \
      #name, [](py::object self) { return view(self.cast<const StepPlan&>().name, self, 2); })

void bind_config(py::module_& m) {
  py::class_<SchedulerConfig>(m, "SchedulerConfig")
      .def(py::init<>())
      .def_readwrite("num_gpu_blocks", &SchedulerConfig::num_gpu_blocks)
      .def_readwrite("num_cpu_blocks", &SchedulerConfig::num_cpu_blocks)
      .def_readwrite("block_size", &SchedulerConfig::block_size)
      .def_readwrite("enable_prefix_caching", &SchedulerConfig::enable_prefix_caching)
      .def_readwrite("prefix_hash_mask", &SchedulerConfig::prefix_hash_mask)
      .def_readwrite("max_num_batched_tokens", &SchedulerConfig::max_num_batched_tokens)
      .def_readwrite("max_num_seqs", &SchedulerConfig::max_num_seqs)
      .def_readwrite("max_model_len", &SchedulerConfig::max_model_len)
      .def_property(
          "preemption_mode",
          [](const SchedulerConfig& c) {
            return c.preemption_mode == PreemptionMode::kSwap ? "swap" : "recompute";
          },
          [](SchedulerConfig& c, const std::string& s) {
            if (s == "swap")
              c.preemption_mode = PreemptionMode::kSwap;
            else if (s == "recompute")
              c.preemption_mode = PreemptionMode::kRecompute;
            else
              throw std::invalid_argument("preemption_mode must be 'recompute' or 'swap', got '" +
                                          s + "'");
          })
      .def_readwrite("max_preemptions_per_step", &SchedulerConfig::max_preemptions_per_step)
      .def_readwrite("min_steps_between_preemptions",
                     &SchedulerConfig::min_steps_between_preemptions)
      .def_readwrite("policy", &SchedulerConfig::policy)
      .def_readwrite("num_queues", &SchedulerConfig::num_queues)
      .def_readwrite("quantum_base", &SchedulerConfig::quantum_base)
      .def_readwrite("quantum_growth", &SchedulerConfig::quantum_growth)
      .def_readwrite("starvation_beta", &SchedulerConfig::starvation_beta)
      .def_readwrite("plas_ltr_first_call", &SchedulerConfig::plas_ltr_first_call)
      .def_readwrite("ltr_tie_break", &SchedulerConfig::ltr_tie_break)
      .def_readwrite("gittins_classes", &SchedulerConfig::gittins_classes)
      .def_readwrite("starve_steps", &SchedulerConfig::starve_steps)
      .def_readwrite("starve_quantum", &SchedulerConfig::starve_quantum)
      .def_readwrite("program_ttl_s", &SchedulerConfig::program_ttl_s)
      .def_readwrite("max_programs", &SchedulerConfig::max_programs)
      .def_readwrite("kv_retention", &SchedulerConfig::kv_retention)
      .def_readwrite("retention_ttl_max_s", &SchedulerConfig::retention_ttl_max_s)
      .def_readwrite("retention_ttl_scale", &SchedulerConfig::retention_ttl_scale)
      .def_readwrite("retention_reload_s_per_token", &SchedulerConfig::retention_reload_s_per_token)
      .def_readwrite("retention_prefetch_blocks", &SchedulerConfig::retention_prefetch_blocks)
      .def("validate", &SchedulerConfig::validate);
}

void bind_plan(py::module_& m) {
  py::class_<StepPlan>(m, "StepPlan")
      .def_readonly("num_decodes", &StepPlan::num_decodes)
      .def_readonly("num_prefills", &StepPlan::num_prefills)
      .def_readonly("step", &StepPlan::step)
      .def_property_readonly("num_seqs", &StepPlan::num_seqs)
      .def_property_readonly("num_tokens", &StepPlan::num_tokens)
      .def_property_readonly("num_samples",
                             [](const StepPlan& p) { return p.sample_seq_idx.size(); })
      .PLAN_ARRAY(seq_ids)
      .PLAN_ARRAY(input_ids)
      .PLAN_ARRAY(positions)
      .PLAN_ARRAY(slot_mapping)
      .PLAN_ARRAY(qo_indptr)
      .PLAN_ARRAY(kv_indptr)
      .PLAN_ARRAY(kv_indices)
      .PLAN_ARRAY(kv_last_page_len)
      .PLAN_ARRAY(seq_lens)
      .PLAN_ARRAY(sample_seq_idx)
      .PLAN_ARRAY(sample_token_idx)
      .PLAN_PAIRS(swap_out)
      .PLAN_PAIRS(swap_in)
      .PLAN_PAIRS(copy)
      .PLAN_ARRAY(preempted);
}

FinishReason parse_reason(const std::string& s) {
  if (s == "stop") return FinishReason::kStop;
  if (s == "length") return FinishReason::kLength;
  if (s == "abort") return FinishReason::kAbort;
  throw std::invalid_argument("finish reason must be 'stop', 'length' or 'abort', got '" + s + "'");
}

#define REPORT_ARRAY(name) \
  def_property_readonly(   \
      #name, [](py::object self) { return view(self.cast<const StepReport&>().name, self); })

void bind_report(py::module_& m) {
  py::class_<FinishedCall>(m, "FinishedCall")
      .def_readonly("seq_id", &FinishedCall::id)
      .def_readonly("request_id", &FinishedCall::request_id)
      .def_property_readonly("reason",
                             [](const FinishedCall& f) { return finish_reason_name(f.reason); })
      .def_readonly("num_prompt_tokens", &FinishedCall::num_prompt_tokens)
      .def_readonly("num_output_tokens", &FinishedCall::num_output_tokens)
      .def_readonly("num_cached_tokens", &FinishedCall::num_cached_tokens)
      .def_readonly("service", &FinishedCall::service)
      .def_readonly("wait", &FinishedCall::wait)
      .def_readonly("program_service", &FinishedCall::program_service)
      .def_readonly("program_critical", &FinishedCall::program_critical)
      .def_readonly("program_wait", &FinishedCall::program_wait)
      .def("__repr__", [](const FinishedCall& f) {
        return "FinishedCall(" + f.request_id + ", " + finish_reason_name(f.reason) + ")";
      });
  py::class_<StepReport>(m, "StepReport")
      .def_readonly("step", &StepReport::step)
      .def_readonly("num_decodes", &StepReport::num_decodes)
      .def_readonly("num_prefills", &StepReport::num_prefills)
      .def_readonly("num_tokens", &StepReport::num_tokens)
      .def_property_readonly("num_seqs", &StepReport::num_seqs)
      .def_readonly("start_time", &StepReport::start_time)
      .def_readonly("end_time", &StepReport::end_time)
      .REPORT_ARRAY(token_seq_ids)
      .REPORT_ARRAY(tokens)
      .REPORT_ARRAY(token_rows)
      .REPORT_ARRAY(first_scheduled)
      .REPORT_ARRAY(first_cached_tokens)
      .REPORT_ARRAY(scheduled)
      .def_property_readonly(  // NOTE: copies: the report's buffers are reused next step
          "finished", [](const StepReport& r) { return std::vector<FinishedCall>(r.finished); })
      .def_readonly("gpu_blocks_free", &StepReport::gpu_blocks_free)
      .def_readonly("gpu_blocks_total", &StepReport::gpu_blocks_total)
      .def_readonly("num_running", &StepReport::num_running)
      .def_readonly("num_waiting", &StepReport::num_waiting)
      .def_readonly("num_swapped", &StepReport::num_swapped);
}

py::dict request_info(const Scheduler& s, SeqId id) {
  const Request& r = s.request(id);
  py::dict d;
  d["request_id"] = r.spec.request_id;
  d["status"] = status_name(r.status);
  d["finish_reason"] = r.finish == FinishReason::kNone
                           ? py::object(py::none())
                           : py::object(py::str(finish_reason_name(r.finish)));
  d["num_prompt_tokens"] = r.num_prompt;
  d["output_token_ids"] = std::vector<TokenId>(r.tokens.begin() + r.num_prompt, r.tokens.end());
  d["num_computed_tokens"] = r.num_computed;
  d["num_cached_tokens"] = r.num_cached_tokens;
  d["num_preemptions"] = r.num_preemptions;
  d["service"] = r.service;
  d["block_ids"] = r.blocks;
  d["cpu_block_ids"] = r.cpu_blocks;
  d["priority_key"] = py::make_tuple(r.key.k0, r.key.k1, r.key.k2, r.key.k3);
  d["queue"] = r.queue;
  d["program_id"] = r.spec.program_id;  // "" for an untagged call (its own one-call program)
  d["total_wait"] = r.total_wait;
  d["snapshot"] = r.snapshot;
  return d;
}

py::dict stats_dict(const Scheduler& s) {
  SchedulerStats st = s.stats();
  py::dict d;
  d["num_running"] = st.num_running;
  d["num_waiting"] = st.num_waiting;
  d["num_swapped"] = st.num_swapped;
  d["gpu_blocks_free"] = st.gpu_blocks_free;
  d["gpu_blocks_total"] = st.gpu_blocks_total;
  d["gpu_blocks_used"] = st.gpu_blocks_total - st.gpu_blocks_free;
  d["gpu_blocks_cached"] = st.gpu_blocks_cached;
  d["cpu_blocks_free"] = st.cpu_blocks_free;
  d["cpu_blocks_total"] = st.cpu_blocks_total;
  d["num_preemptions_recompute"] = st.num_preemptions_recompute;
  d["num_preemptions_swap"] = st.num_preemptions_swap;
  d["blocks_swapped_out"] = st.blocks_swapped_out;
  d["blocks_swapped_in"] = st.blocks_swapped_in;
  d["prefix_query_tokens"] = st.prefix_query_tokens;
  d["prefix_hit_tokens"] = st.prefix_hit_tokens;
  d["num_steps"] = st.num_steps;
  d["host_hit_tokens"] = st.host_hit_tokens;
  d["blocks_offloaded"] = st.blocks_offloaded;
  d["blocks_loaded"] = st.blocks_loaded;
  d["blocks_prefetched"] = st.blocks_prefetched;
  d["cpu_blocks_cached"] = st.cpu_blocks_cached;
  d["gpu_blocks_pinned"] = st.gpu_blocks_pinned;
  d["num_finished_stop"] = st.num_finished_stop;
  d["num_finished_length"] = st.num_finished_length;
  d["num_finished_abort"] = st.num_finished_abort;
  return d;
}

SeqId add_request(Scheduler& s, const std::string& request_id,
                  py::array_t<int32_t, py::array::c_style | py::array::forcecast> prompt,
                  int max_tokens, int min_tokens, bool ignore_eos,
                  std::vector<TokenId> stop_token_ids, double priority, double arrival_time,
                  std::string cache_salt, std::string program_id, double ltr_score,
                  double remaining_hint, double program_remaining_hint) {
  if (prompt.ndim() != 1) throw std::invalid_argument("prompt must be a 1-D sequence of token ids");
  RequestSpec spec;
  spec.request_id = request_id;
  spec.prompt.assign(prompt.data(), prompt.data() + prompt.size());
  spec.max_tokens = max_tokens;
  spec.min_tokens = min_tokens;
  spec.ignore_eos = ignore_eos;
  spec.stop_token_ids = std::move(stop_token_ids);
  spec.priority = priority;
  spec.arrival_time = arrival_time;
  spec.cache_salt = std::move(cache_salt);
  spec.program_id = std::move(program_id);
  spec.ltr_score = ltr_score;
  spec.remaining_hint = remaining_hint;
  spec.program_remaining_hint = program_remaining_hint;
  return s.add_request(std::move(spec));
}

const StepReport& update(Scheduler& s,
                         py::array_t<int32_t, py::array::c_style | py::array::forcecast> sampled,
                         double step_seconds) {
  py::gil_scoped_release release;
  return s.update(sampled.data(), int(sampled.size()), step_seconds);
}

py::object program_info(const ProgramTable& t, const std::string& id) {
  const ProgramEntry* e = t.find(id);
  if (!e) return py::none();
  py::dict d;
  d["program_id"] = e->id;
  d["service"] = e->service;
  d["coming_back"] = e->coming_back;
  d["critical"] = e->critical;
  d["wait"] = e->wait;
  d["active_calls"] = e->active_calls;
  d["last_arrival"] = e->last_arrival;
  d["last_completion"] = e->last_completion;
  d["engine_id"] = e->engine_id;
  d["coming_back"] = e->coming_back;
  return d;
}

void bind_programs(py::module_& m) {
  // NOTE: a subclass of RuntimeError, so callers that only know RuntimeError still see it.
  py::register_exception<ProgramTableFull>(m, "ProgramTableFull", PyExc_RuntimeError);
  py::class_<ProgramTable, std::shared_ptr<ProgramTable>>(m, "ProgramTable")
      .def(py::init<double, size_t>(), py::arg("ttl_s") = 600.0, py::arg("max_programs") = 0)
      .def("start", &ProgramTable::start, py::arg("program_id"), py::arg("now") = 0.0)
      .def("end", &ProgramTable::end, py::arg("program_id"))
      .def("__contains__", &ProgramTable::contains)
      .def("__len__", &ProgramTable::size)
      .def("collect", &ProgramTable::collect, py::arg("now"))
      .def("ids", &ProgramTable::ids)
      .def_property("max_programs", &ProgramTable::max_programs, &ProgramTable::set_max_programs)
      .def_property("ttl", &ProgramTable::ttl, &ProgramTable::set_ttl)
      .def_property_readonly("num_retired", &ProgramTable::num_retired)
      .def("check", &ProgramTable::check)
      .def("mark_coming_back", &ProgramTable::mark_coming_back, py::arg("program_id"),
           "Marks a live program as coming back (its last call ended with a tool call); returns "
           "False for an unknown id. Its next call clears the mark.")
      .def("coming_back", &ProgramTable::coming_back, py::arg("program_id"))
      .def("info", &program_info, py::arg("program_id"));
}

void bind_scheduler(py::module_& m) {
  py::class_<Scheduler>(m, "Scheduler")
      .def(py::init<const SchedulerConfig&, std::vector<TokenId>, std::shared_ptr<ProgramTable>>(),
           py::arg("config"), py::arg("eos_token_ids") = std::vector<TokenId>{},
           py::arg("programs") = nullptr)
      .def("add_request", &add_request, py::arg("request_id"), py::arg("prompt"),
           py::arg("max_tokens") = 16, py::arg("min_tokens") = 0, py::arg("ignore_eos") = false,
           py::arg("stop_token_ids") = std::vector<TokenId>{}, py::arg("priority") = 0.0,
           py::arg("arrival_time") = 0.0, py::arg("cache_salt") = "", py::arg("program_id") = "",
           py::arg("ltr_score") = 0.0, py::arg("remaining_hint") = -1.0,
           py::arg("program_remaining_hint") = -1.0)
      .def("abort", &Scheduler::abort, py::arg("request_id"))
      .def(
          "finish",
          [](Scheduler& s, const std::string& id, const std::string& reason) {
            return s.finish(id, parse_reason(reason));
          },
          py::arg("request_id"), py::arg("reason") = "stop")
      .def("schedule", &Scheduler::schedule, py::return_value_policy::reference_internal,
           py::call_guard<py::gil_scoped_release>())
      .def("update", &update, py::arg("sampled"), py::arg("step_seconds") = 0.0,
           py::return_value_policy::reference_internal)
      .def("find", &Scheduler::find)
      .def("start_program", &Scheduler::start_program, py::arg("program_id"))
      .def("end_program", &Scheduler::end_program, py::arg("program_id"))
      .def("mark_coming_back", &Scheduler::mark_coming_back, py::arg("program_id"))
      .def("release_all_pins", &Scheduler::release_all_pins)
      .def("program_info",
           [](const Scheduler& s, const std::string& id) { return program_info(s.programs(), id); })
      .def_property_readonly("programs", &Scheduler::program_table)
      .def("advance_clock", &Scheduler::advance_clock, py::arg("t"))
      .def("request_info", &request_info)
      .def("stats", &stats_dict)
      .def("has_unfinished", &Scheduler::has_unfinished)
      .def("check_invariants", &Scheduler::check_invariants)
      .def_property_readonly("now", &Scheduler::now)
      .def_property_readonly("policy_name", [](const Scheduler& s) { return s.policy().name(); })
      .def("ref_count", [](const Scheduler& s, BlockId b) { return s.allocator().ref_count(b); })
      .def("is_cached", [](const Scheduler& s, BlockId b) { return s.allocator().is_cached(b); })
      .def("free_list", [](const Scheduler& s) { return s.allocator().free_list(); });
}

void bind_allocator(py::module_& m) {
  py::class_<BlockAllocator>(m, "BlockAllocator")
      .def(py::init<int, int, uint64_t>(), py::arg("num_blocks"), py::arg("block_size"),
           py::arg("hash_mask") = ~uint64_t{0})
      .def_property_readonly("num_free", &BlockAllocator::num_free)
      .def_property_readonly("num_blocks", &BlockAllocator::num_blocks)
      .def_property_readonly("num_cached", &BlockAllocator::num_cached)
      .def("allocate", &BlockAllocator::allocate)
      .def("incref", &BlockAllocator::incref)
      .def("decref", &BlockAllocator::decref)
      .def("ref_count", &BlockAllocator::ref_count)
      .def("is_cached", &BlockAllocator::is_cached)
      .def("free_list", &BlockAllocator::free_list)
      .def("check", &BlockAllocator::check)
      .def(
          "lookup",
          [](BlockAllocator& a, const std::vector<TokenId>& tokens, uint64_t salt) {
            std::vector<BlockId> hits;
            std::vector<uint64_t> hashes;
            a.lookup(tokens.data(), int(tokens.size()), salt, &hits, &hashes);
            return py::make_tuple(hits, hashes);
          },
          py::arg("tokens"), py::arg("salt_hash") = 0)
      .def(
          "register_block",
          [](BlockAllocator& a, BlockId b, BlockId parent, uint64_t parent_hash,
             const std::vector<TokenId>& tokens, uint64_t salt) {
            if (int(tokens.size()) != a.block_size())
              throw std::invalid_argument("register_block needs exactly block_size tokens");
            uint64_t h = 0;
            BlockId c = a.register_block(b, parent, parent_hash, tokens.data(), salt, &h);
            return py::make_tuple(c, h);
          },
          py::arg("block"), py::arg("parent"), py::arg("parent_hash"), py::arg("tokens"),
          py::arg("salt_hash") = 0);
}

}  // namespace

void bind_router(py::module_& m);          // core_router.cc
void bind_program_policy(py::module_& m);  // core_policy.cc
void bind_attention(py::module_& m);       // core_attention.cc
void bind_service(py::module_& m);         // core_service.cc

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyserve C++ scheduling core";
  bind_config(m);
  bind_plan(m);
  bind_report(m);
  bind_programs(m);
  bind_scheduler(m);
  bind_allocator(m);
  bind_router(m);
  bind_program_policy(m);
  bind_attention(m);
  bind_service(m);
  m.def("policy_names", &policy_names);
  m.def("retention_names", &retention_names);
  m.def("hash_string", &hash_string);
  m.def("hash_block", [](uint64_t parent, const std::vector<TokenId>& t, uint64_t salt) {
    return hash_block(parent, t.data(), int(t.size()), salt);
  });
  m.def(
      "draw_token_ids",
      [](uint64_t seed, int64_t n, int32_t low, int32_t high) {
        if (n < 0) throw std::invalid_argument("draw_token_ids: n must be >= 0");
        py::array_t<int32_t> out(n);
        draw_token_ids(seed, n, low, high, out.mutable_data());
        return out;
      },
      py::arg("seed"), py::arg("n"), py::arg("low"), py::arg("high"));
  m.def(
      "hash_block_token_ids",
      [](py::array_t<uint64_t, py::array::c_style | py::array::forcecast> hash_ids,
         int block_tokens, int32_t low, int32_t high) {
        if (hash_ids.ndim() != 1) throw std::invalid_argument("hash_ids must be 1-D");
        if (block_tokens < 1) throw std::invalid_argument("block_tokens must be >= 1");
        py::array_t<int32_t> out(hash_ids.size() * block_tokens);
        hash_block_token_ids(hash_ids.data(), hash_ids.size(), block_tokens, low, high,
                             out.mutable_data());
        return out;
      },
      py::arg("hash_ids"), py::arg("block_tokens"), py::arg("low"), py::arg("high"));
}
