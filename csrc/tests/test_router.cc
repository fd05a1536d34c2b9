// Load balancer rules and invariants (ctest; built with ASan/UBSan in CI): short calls go to the
// least-loaded engine, long calls stick to their program's engine, dead engines are never chosen,
// and randomized route/start/finish/death sequences keep the bookkeeping consistent.
#include <cstdio>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "pyserve/load_balancer.h"

using namespace pyserve;

namespace {

void expect(bool ok, const std::string& what) {
  if (!ok) throw std::logic_error("expectation failed: " + what);
}

template <typename E, typename F>
void expect_throw(F f, const std::string& what) {
  try {
    f();
  } catch (const E&) {
    return;
  }
  throw std::logic_error("expected an exception: " + what);
}

RouterConfig config(const std::string& policy, const std::string& signal = "calls") {
  RouterConfig c;
  c.policy = policy;
  c.load_signal = signal;
  c.short_call_tokens = 100;
  c.block_size = 16;
  return c;
}

void test_locality_rules() {
  auto table = std::make_shared<ProgramTable>(600.0);
  LoadBalancer lb(config("locality"), 3, table);
  // Short calls spread to the least-loaded engine (ties: lowest index).
  expect(lb.route("s0", "p", 50) == 0, "first short call on engine 0");
  expect(lb.route("s1", "p", 50) == 1, "second short call on engine 1");
  expect(lb.sticky_engine("p") == -1, "short calls do not make a program sticky");
  // First long call of q goes to the least-loaded engine (2) and sticks there.
  expect(lb.route("l0", "q", 500) == 2, "first long call on the least-loaded engine");
  expect(lb.sticky_engine("q") == 2, "long call records stickiness");
  table->call_arrived("q", 0.0);
  for (int i = 0; i < 4; ++i)
    expect(lb.route("l" + std::to_string(i + 1), "q", 500) == 2, "long calls stick");
  // A short call of the same program still goes to the least-loaded engine.
  expect(lb.route("s2", "q", 10) != 2, "short call of a sticky program balances");
  // A long call without a program id is balanced, never sticky.
  int e = lb.route("anon", "", 5000);
  expect(e != 2, "untagged long call balances");
  lb.check();
  // The program leaves the table (ended): stickiness is collected.
  table->call_finished("q", 1.0, 0.0, 1.0);
  table->end("q");
  expect(lb.collect() == 1 && lb.sticky_engine("q") == -1, "collect forgets ended programs");
  for (const char* id : {"s0", "s1", "s2", "l0", "l1", "l2", "l3", "l4", "anon"}) lb.finished(id);
  expect(lb.num_calls() == 0, "all calls finished");
  lb.check();
}

void test_headroom_tiebreak_and_llumnix() {
  LoadBalancer lb(config("least_loaded"), 2);
  lb.report(0, 10, 100);
  lb.report(1, 90, 100);
  expect(lb.route("a", "", 16) == 1, "tie on calls broken by KV headroom");
  lb.started("a");
  lb.report(1, 89, 100);
  expect(lb.route("b", "", 16) == 0, "fewest calls first");
  LoadBalancer ll(config("least_loaded", "llumnix"), 2);
  ll.report(0, 10, 100);
  ll.report(1, 90, 100);
  expect(ll.route("a", "", 16) == 1, "llumnix: most headroom");
  ll.started("a");
  expect(ll.route("b", "", 16) == 1, "llumnix: 90/2 beats 10/1");
  // Queued demand counts against headroom until the call starts.
  expect(ll.route("c", "", 16 * 60) == 1, "llumnix: (90 - 1 queued) / 3 beats 10 / 1");
  expect(ll.engine(1).queued_blocks == 61, "queued blocks of b and c");
  expect(ll.route("d", "", 16) == 0, "llumnix: queued demand lowers freeness");
  ll.check();
}

void test_round_robin_and_dead_engines() {
  LoadBalancer lb(config("round_robin"), 3);
  std::vector<int> seen;
  for (int i = 0; i < 6; ++i) seen.push_back(lb.route("r" + std::to_string(i), "", 5));
  expect(seen == std::vector<int>({0, 1, 2, 0, 1, 2}), "round robin cycles");
  auto inflight = lb.mark_dead(1);
  expect(inflight == std::vector<std::string>({"r1", "r4"}), "in-flight calls of a dead engine");
  for (int i = 6; i < 12; ++i) expect(lb.route("r" + std::to_string(i), "", 5) != 1, "dead skip");
  for (const auto& id : inflight) lb.finished(id);
  lb.check();

  LoadBalancer loc(config("locality"), 2);
  expect(loc.route("x", "p", 1000) == 0, "long call sticks to 0");
  loc.mark_dead(0);
  expect(loc.sticky_engine("p") == -1, "stickiness to a dead engine dropped");
  expect(loc.route("y", "p", 1000) == 1, "re-stuck to a live engine");
  loc.mark_dead(1);
  expect_throw<std::runtime_error>([&] { loc.route("z", "p", 1); }, "no live engine");
  loc.check();
}

void test_bad_input() {
  RouterConfig bad = config("nope");
  expect_throw<std::invalid_argument>([&] { LoadBalancer lb(bad, 2); }, "unknown policy");
  expect_throw<std::invalid_argument>([&] { LoadBalancer lb(config("locality"), 0); },
                                      "zero engines");
  LoadBalancer lb(config("locality"), 2);
  lb.route("a", "p", 1);
  expect_throw<std::invalid_argument>([&] { lb.route("a", "p", 1); }, "duplicate call");
  expect_throw<std::invalid_argument>([&] { lb.route("b", "p", -1); }, "negative tokens");
  expect_throw<std::invalid_argument>([&] { lb.finished("zz"); }, "unknown call");
  expect_throw<std::invalid_argument>([&] { lb.report(5, 1, 2); }, "engine out of range");
  expect_throw<std::invalid_argument>([&] { lb.report(0, 3, 2); }, "free > total");
  ProgramTable t;
  expect_throw<std::invalid_argument>([&] { sync_program(t, "", 1, 0, 0, 0); }, "empty id");
  sync_program(t, "p", 2.0, 1.0, 0.5, 0.0);
  sync_program(t, "p", 1.0, 3.0, 0.0, 0.0);
  const ProgramEntry* e = t.find("p");
  expect(e && e->service == 2.0 && e->critical == 3.0 && e->active_calls == 0, "sync is a max");
  lb.check();
}

// Random routes, starts, finishes, reports, deaths and program ends; invariants after each op.
void test_random(uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const char* policies[] = {"locality", "round_robin", "least_loaded"};
  auto table = std::make_shared<ProgramTable>(5.0);
  RouterConfig cfg = config(policies[seed % 3], seed % 2 ? "llumnix" : "calls");
  LoadBalancer lb(cfg, uni(1, 6), table);
  std::vector<std::string> live;
  int next = 0;
  for (int op = 0; op < 3000; ++op) {
    const int kind = uni(0, 99);
    if (kind < 45 && lb.num_alive() > 0) {
      const std::string pid = uni(0, 4) ? "p" + std::to_string(uni(0, 20)) : "";
      const std::string id = "c" + std::to_string(next++);
      const int e = lb.route(id, pid, uni(0, 300));
      if (!lb.engine(e).alive) throw std::logic_error("routed to a dead engine");
      if (!pid.empty()) table->call_arrived(pid, op);
      live.push_back(id + "|" + pid);
    } else if (kind < 60 && !live.empty()) {
      const std::string& s = live[uni(0, int(live.size()) - 1)];
      lb.started(s.substr(0, s.find('|')));
    } else if (kind < 90 && !live.empty()) {
      const size_t k = uni(0, int(live.size()) - 1);
      const std::string s = live[k];
      const std::string id = s.substr(0, s.find('|')), pid = s.substr(s.find('|') + 1);
      lb.finished(id);
      if (!pid.empty()) table->call_finished(pid, 0.1, 0.0, op);
      live.erase(live.begin() + k);
    } else if (kind < 97) {
      const int e = uni(0, lb.num_engines() - 1);
      const int total = uni(0, 100);
      lb.report(e, uni(0, total), total);
    } else if (kind < 98 && lb.num_alive() > 1) {
      lb.mark_dead(uni(0, lb.num_engines() - 1));
    } else {
      table->collect(op);
      lb.collect();
    }
    lb.check();
  }
}

}  // namespace

int main() {
  try {
    test_locality_rules();
    test_headroom_tiebreak_and_llumnix();
    test_round_robin_and_dead_engines();
    test_bad_input();
    for (uint64_t seed = 0; seed < 24; ++seed) test_random(seed);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL: %s\n", e.what());
    return 1;
  }
  std::printf("test_router: ok\n");
  return 0;
}
