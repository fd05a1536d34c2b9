// Factories of the built-in policies, one file each under csrc/policies/.
#pragma once
#include <memory>

#include "pyserve/policy.h"

namespace pyserve {

std::unique_ptr<Policy> make_fcfs(const SchedulerConfig& cfg);
std::unique_ptr<Policy> make_priority(const SchedulerConfig& cfg);

}  // namespace pyserve
