// Gittins ranks of the online size distribution against closed forms (ctest; ASan/UBSan in CI):
// exponential sizes give a constant rank (the mean), a two-point distribution the textbook
// min((s1 - a) / p, E[S] - a), known sizes SRPT's remaining size, and decay forgets old sizes.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "pyserve/service_distribution.h"

using namespace pyserve;

namespace {

void expect_near(double got, double want, double rel, const std::string& what) {
  if (std::abs(got - want) > rel * std::abs(want) + 1e-12)
    throw std::logic_error(what + ": got " + std::to_string(got) + ", want " +
                           std::to_string(want));
}

void test_exponential_constant() {
  const double mu = 1.5;
  const int n = 4000;
  std::vector<double> x(n);
  for (int i = 0; i < n; ++i) x[i] = -mu * std::log(1.0 - (i + 0.5) / n);
  std::shuffle(x.begin(), x.end(), std::mt19937(0));
  ServiceDistribution d(0.0);
  for (double v : x) d.observe(-1, v);
  for (int k = 0; k < ServiceHistogram::kBins && ServiceHistogram::edge(k) <= 3 * mu; ++k)
    expect_near(d.rank(-1, ServiceHistogram::edge(k)), mu, 0.04, "exponential rank");
}

void test_two_point() {
  for (double p : {0.8, 0.3, 0.03}) {
    const double s1 = 0.5, s2 = 10.0, mean = p * s1 + (1 - p) * s2;
    ServiceDistribution d(0.0);
    const int k = int(std::lround(p * 1000));
    for (int i = 0; i < 1000; ++i) d.observe(-1, i < k ? s1 : s2);
    for (int b = 0; b < ServiceHistogram::kBins; ++b) {
      const double a = ServiceHistogram::edge(b);
      if (a >= s2) break;
      const double want = a >= s1 ? s2 - a : std::min((s1 - a) / p, mean - a);
      expect_near(d.rank(-1, a), want, 1e-9, "two-point rank");
    }
  }
}

void test_known_size_and_beyond() {
  ServiceDistribution d(0.0);
  expect_near(d.rank(-1, 0.7), 0.7, 0, "no data: least attained service");
  for (int i = 0; i < 40; ++i) d.observe(3, 2.0);
  for (double a : {0.0, 0.5, 1.9}) expect_near(d.rank(3, a), 2.0 - a, 1e-9, "srpt");
  expect_near(d.rank(3, 2.5), 2.5, 0, "beyond the largest size");
}

void test_decay_forgets() {
  ServiceDistribution d(100.0);
  for (int i = 0; i < 2000; ++i) d.observe(-1, 1.0);
  for (int i = 0; i < 2000; ++i) d.observe(-1, 3.0);
  expect_near(d.rank(-1, 0.0), 3.0, 1e-3, "old sizes decayed");
  expect_near(d.count(-1), 100.0 / std::log(2.0), 0.01, "effective count");
}

}  // namespace

int main() {
  test_exponential_constant();
  test_two_point();
  test_known_size_and_beyond();
  test_decay_forgets();
  std::puts("test_gittins: ok");
  return 0;
}
