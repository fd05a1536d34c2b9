// Program table: random starts, ends, calls and TTL collections against a simple model; the idle
// index and retired entries are checked after every operation.
#include <cstdio>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "pyserve/program_table.h"

using namespace pyserve;

namespace {

void expect(bool ok, const std::string& what) {
  if (!ok) throw std::logic_error("expectation failed: " + what);
}

void test_end_frees_the_id() {
  ProgramTable t(10.0, 2);
  t.start("a", 0.0);
  ProgramEntry& old = t.call_arrived("a", 1.0);
  t.end("a");
  expect(!t.contains("a") && t.num_retired() == 1, "ended id is free, entry retired");
  ProgramEntry& fresh = t.call_arrived("a", 2.0);
  expect(&fresh != &old && fresh.service == 0.0, "a new call gets a fresh entry");
  t.call_finished(old, 5.0, 0.0, 3.0);
  expect(t.num_retired() == 0 && t.find("a")->service == 0.0, "old call never touches the new");
  t.start("b", 0.0);
  bool full = false;
  try {
    t.start("c", 0.0);
  } catch (const ProgramTableFull&) {
    full = true;
  }
  expect(full, "cap");
  t.check();
}

void test_random(uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  ProgramTable t(20.0, 0);
  std::vector<ProgramEntry*> calls;   // entries of running calls
  std::map<std::string, int> active;  // live id -> running calls (model)
  double now = 0.0;
  for (int op = 0; op < 4000; ++op) {
    now += 0.1 * uni(0, 10);
    const std::string id = "p" + std::to_string(uni(0, 40));
    const int kind = uni(0, 99);
    if (kind < 20) {
      if (!t.contains(id)) t.start(id, now), active[id] = 0;
    } else if (kind < 35) {
      if (t.contains(id)) t.end(id), active.erase(id);
    } else if (kind < 65) {
      calls.push_back(&t.call_arrived(id, now));
      active[id] += 1;
    } else if (kind < 95 && !calls.empty()) {
      const size_t k = uni(0, int(calls.size()) - 1);
      ProgramEntry* e = calls[k];
      if (!e->ended) active[e->id] -= 1;
      t.call_finished(*e, 0.01, 0.0, now);
      calls.erase(calls.begin() + k);
    } else {
      t.collect(now);
      for (auto it = active.begin(); it != active.end();) {
        it = t.contains(it->first) ? std::next(it) : active.erase(it);
      }
    }
    t.check();
    expect(t.size() == active.size(), "live count matches the model");
    for (const auto& [pid, n] : active) expect(t.find(pid)->active_calls == n, "active calls");
  }
}

}  // namespace

int main() {
  try {
    test_end_frees_the_id();
    for (uint64_t seed = 0; seed < 16; ++seed) test_random(seed);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL: %s\n", e.what());
    return 1;
  }
  std::printf("test_program_table: ok\n");
  return 0;
}
