// Factories of the built-in policies, one file each under csrc/policies/.
#pragma once
#include <memory>

#include "pyserve/policy.h"

namespace pyserve {

std::unique_ptr<Policy> make_fcfs(const SchedulerConfig& cfg);
std::unique_ptr<Policy> make_priority(const SchedulerConfig& cfg);
std::unique_ptr<Policy> make_sjf(const SchedulerConfig& cfg);
std::unique_ptr<Policy> make_srpt(const SchedulerConfig& cfg);
std::unique_ptr<Policy> make_ltr(const SchedulerConfig& cfg);
std::unique_ptr<Policy> make_mlfq(const SchedulerConfig& cfg);
std::unique_ptr<Policy> make_plas(const SchedulerConfig& cfg);
std::unique_ptr<Policy> make_atlas(const SchedulerConfig& cfg);
std::unique_ptr<Policy> make_gittins(const SchedulerConfig& cfg);

}  // namespace pyserve
