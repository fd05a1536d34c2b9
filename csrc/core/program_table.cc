#include "pyserve/program_table.h"

#include <algorithm>
#include <iterator>
#include <stdexcept>

namespace pyserve {

ProgramEntry& ProgramTable::create(const std::string& id, double now) {
  auto e = std::make_unique<ProgramEntry>();
  e->id = id;
  e->last_arrival = e->last_completion = now;
  ProgramEntry& ref = *e;
  live_.emplace(id, std::move(e));
  return ref;
}

void ProgramTable::set_idle(ProgramEntry& e) {
  unset_idle(e);
  e.idle_key = std::max(0.0, e.last_activity());
  idle_.emplace(e.idle_key, &e);
}

void ProgramTable::unset_idle(ProgramEntry& e) {
  if (e.idle_key < 0.0) return;
  idle_.erase({e.idle_key, &e});
  e.idle_key = -1.0;
}

void ProgramTable::erase_live(const std::string& id) {
  auto it = live_.find(id);
  unset_idle(*it->second);
  live_.erase(it);
}

void ProgramTable::start(const std::string& id, double now) {
  if (id.empty()) throw std::invalid_argument("program id must not be empty");
  std::lock_guard<std::mutex> lock(mu_);
  if (live_.count(id)) throw std::invalid_argument("program '" + id + "' is already started");
  if (max_programs_ > 0 && live_.size() >= max_programs_)
    throw ProgramTableFull("the program table is full (" + std::to_string(max_programs_) +
                           " live programs)");
  ProgramEntry& e = create(id, now);
  e.implicit = false;
  set_idle(e);
}

void ProgramTable::end(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(id);
  if (it == live_.end()) throw std::invalid_argument("unknown program '" + id + "'");
  if (it->second->active_calls == 0) {
    completed(*it->second);
    erase_live(id);
    return;
  }
  it->second->ended = true;
  retired_[id].push_back(std::move(it->second));
  live_.erase(it);
}

const ProgramEntry* ProgramTable::find(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(id);
  return it == live_.end() ? nullptr : it->second.get();
}

ProgramEntry& ProgramTable::touch(const std::string& id, double now) {
  ProgramEntry* e = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(id);
    e = it == live_.end() ? &create(id, now) : it->second.get();
  }
  e->last_arrival = std::max(e->last_arrival, now);
  if (e->active_calls == 0) set_idle(*e);  // re-keyed by its new activity
  return *e;
}

ProgramEntry& ProgramTable::call_arrived(const std::string& id, double now) {
  ProgramEntry& e = touch(id, now);
  ++e.active_calls;
  e.coming_back = false;
  unset_idle(e);
  return e;
}

bool ProgramTable::mark_coming_back(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(id);
  if (it == live_.end()) return false;
  it->second->coming_back = true;
  return true;
}

bool ProgramTable::coming_back(const std::string& id) const {
  const ProgramEntry* e = find(id);
  return e != nullptr && e->coming_back;
}

void ProgramTable::call_finished(ProgramEntry& e, double call_service, double call_wait,
                                 double now) {
  std::lock_guard<std::mutex> lock(mu_);
  finish_entry(e, call_service, call_wait, now);
}

void ProgramTable::finish_entry(ProgramEntry& e, double call_service, double call_wait,
                                double now) {
  e.service += call_service;
  e.wait += call_wait;
  e.active_calls = std::max(0, e.active_calls - 1);
  e.last_completion = std::max(e.last_completion, now);
  if (e.active_calls > 0) return;
  if (!e.ended) {
    set_idle(e);
    return;
  }
  auto it = retired_.find(e.id);
  if (it == retired_.end()) return;
  completed(e);  // an ended program's last call finished: it leaves the table
  auto& gens = it->second;
  gens.erase(std::remove_if(gens.begin(), gens.end(), [&](const auto& p) { return p.get() == &e; }),
             gens.end());
  if (gens.empty()) retired_.erase(it);
}

void ProgramTable::call_finished(const std::string& id, double call_service, double call_wait,
                                 double now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = retired_.find(id);
  if (r != retired_.end()) {
    finish_entry(*r->second.front(), call_service, call_wait, now);
    return;
  }
  auto it = live_.find(id);
  if (it != live_.end()) finish_entry(*it->second, call_service, call_wait, now);
}

int ProgramTable::collect(double now) {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  while (!idle_.empty() && now - idle_.begin()->first >= ttl_s_) {
    std::string id = idle_.begin()->second->id;
    completed(*idle_.begin()->second);
    erase_live(id);
    ++n;
  }
  return n;
}

size_t ProgramTable::num_retired() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& [id, gens] : retired_) n += gens.size();
  return n;
}

void ProgramTable::solo_finished(ProgramEntry& e, double call_service, double call_wait,
                                 double now) {
  e.service += call_service;
  e.wait += call_wait;
  e.active_calls = 0;
  e.last_completion = now;
  std::lock_guard<std::mutex> lock(mu_);
  completed(e);
}

void ProgramTable::completed(const ProgramEntry& e) {
  // NOTE: critical is the critical-path service kept by atlas and gittins (their on_finish);
  // other policies leave it 0 and record nothing.
  if (e.critical > 0.0) service_.observe(e.service_class, e.critical);
}

std::vector<std::string> ProgramTable::ids() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  out.reserve(live_.size());
  for (const auto& [id, e] : live_) out.push_back(id);
  return out;
}

void ProgramTable::check() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t idle = 0;
  for (const auto& [id, e] : live_) {
    if (e->id != id || e->ended) throw std::logic_error("program '" + id + "': bad live entry");
    bool indexed = e->idle_key >= 0.0;
    if (indexed != (e->active_calls == 0))
      throw std::logic_error("program '" + id + "': idle index disagrees with its active calls");
    if (indexed && !idle_.count({e->idle_key, e.get()}))
      throw std::logic_error("program '" + id + "': missing from the idle index");
    idle += indexed;
  }
  if (idle != idle_.size()) throw std::logic_error("idle index holds entries not in the table");
  for (const auto& [id, gens] : retired_) {
    for (const auto& e : gens) {
      if (!e->ended || e->active_calls <= 0)
        throw std::logic_error("program '" + id + "': retired entry without running calls");
    }
  }
}

}  // namespace pyserve
