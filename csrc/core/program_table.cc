#include "pyserve/program_table.h"

#include <algorithm>
#include <stdexcept>

namespace pyserve {

void ProgramTable::start(const std::string& id, double now) {
  if (id.empty()) throw std::invalid_argument("program id must not be empty");
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = entries_.try_emplace(id);
  if (!inserted) throw std::invalid_argument("program '" + id + "' is already started");
  it->second.id = id;
  it->second.implicit = false;
  it->second.last_arrival = it->second.last_completion = now;
}

void ProgramTable::end(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) throw std::invalid_argument("unknown program '" + id + "'");
  if (it->second.active_calls == 0) {
    entries_.erase(it);
  } else {
    it->second.ended = true;
  }
}

const ProgramEntry* ProgramTable::find(const std::string& id) const {
  auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : &it->second;
}

ProgramEntry& ProgramTable::call_arrived(const std::string& id, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = entries_.try_emplace(id);
  ProgramEntry& e = it->second;
  if (inserted) {
    e.id = id;
    e.last_completion = now;
  }
  ++e.active_calls;
  e.coming_back = false;
  e.last_arrival = std::max(e.last_arrival, now);
  return e;
}

void ProgramTable::call_finished(const std::string& id, double call_service, double call_wait,
                                 double now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  ProgramEntry& e = it->second;
  e.service += call_service;
  e.wait += call_wait;
  e.active_calls = std::max(0, e.active_calls - 1);
  e.last_completion = std::max(e.last_completion, now);
  if (e.active_calls == 0 && e.ended) entries_.erase(it);
}

bool ProgramTable::mark_coming_back(const std::string& id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return false;
  it->second.coming_back = true;
  return true;
}

bool ProgramTable::coming_back(const std::string& id) const {
  const ProgramEntry* e = find(id);
  return e != nullptr && e->coming_back;
}

int ProgramTable::collect(double now) {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    const ProgramEntry& e = it->second;
    double last = std::max(e.last_arrival, e.last_completion);
    if (e.active_calls == 0 && now - last >= ttl_s_) {
      it = entries_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

std::vector<std::string> ProgramTable::ids() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [id, e] : entries_) out.push_back(id);
  return out;
}

}  // namespace pyserve
