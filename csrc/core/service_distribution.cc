// Gittins ranks from an online, decayed, log-binned histogram of program sizes.
#include "pyserve/service_distribution.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace pyserve {

int ServiceHistogram::bin_of(double s) {
  if (!(s >= kLow)) return 0;
  const int k = 1 + static_cast<int>(std::floor(std::log(s / kLow) / std::log(kRatio)));
  return std::min(k, kBins - 1);
}

double ServiceHistogram::edge(int k) { return k == 0 ? 0.0 : kLow * std::pow(kRatio, k - 1); }

void ServiceHistogram::observe(double size, double decay, double w) {
  if (!(size >= 0.0) || !std::isfinite(size)) throw std::invalid_argument("size must be >= 0");
  if (!(w > 0.0) || !std::isfinite(w)) throw std::invalid_argument("weight must be > 0");
  if (!(decay > 0.0 && decay <= 1.0)) throw std::invalid_argument("decay must be in (0, 1]");
  scale_ /= decay;  // NOTE: older mass decays relative to the new one
  if (scale_ > 1e100) {
    for (int k = 0; k < kBins; ++k) mass_[k] /= scale_, sum_[k] /= scale_;
    total_ /= scale_;
    scale_ = 1.0;
  }
  const int b = bin_of(size);
  if (seen_[b]++ == 0) lo_[b] = hi_[b] = size;
  lo_[b] = std::min(lo_[b], size);
  hi_[b] = std::max(hi_[b], size);
  mass_[b] += w * scale_;
  sum_[b] += w * scale_ * size;
  total_ += w * scale_;
  max_ = std::max(max_, size);
  stale_ = true;
}

// O(kBins^2): for every edge a, scan the thresholds above it. Amortised over completions.
void ServiceHistogram::rebuild() const {
  std::array<double, kBins + 1> suffix{};
  for (int j = kBins - 1; j >= 0; --j) suffix[j] = suffix[j + 1] + mass_[j];
  for (int k = 0; k < kBins; ++k) {
    const double a = edge(k);
    double best = -1.0, p = 0.0, num = 0.0;
    for (int j = k; j < kBins; ++j) {
      if (mass_[j] == 0.0) continue;
      const bool point = (lo_[j] == hi_[j] && seen_[j] > 1) || j + 1 == kBins;
      const double done_by = point ? hi_[j] : edge(j + 1);  // the bin's mass has completed
      p += mass_[j];
      num += sum_[j] - mass_[j] * a;
      // NOTE: a threshold that fewer than kMinMass programs complete by is sampling noise (one
      // tiny size would claim a huge index); the last one (all the mass) always counts.
      if (p < kMinMass * scale_ && suffix[j + 1] > 0.0) continue;
      const double r = (num + suffix[j + 1] * (done_by - a)) / p;
      if (best < 0.0 || r < best) best = std::max(r, 0.0);
    }
    rank_at_[k] = best;
  }
  stale_ = false;
}

double ServiceHistogram::rank(double a) const {
  if (total_ == 0.0 || a >= max_) return a;
  if (stale_) rebuild();
  const int k = bin_of(a);
  const double e0 = edge(k), r0 = rank_at_[k];
  if (k + 1 < kBins && rank_at_[k + 1] >= 0.0) {  // linear between the bin's edges
    const double e1 = edge(k + 1);
    return r0 + (rank_at_[k + 1] - r0) * (a - e0) / (e1 - e0);
  }
  return std::max(r0 - (a - e0), 0.0);  // only this bin's mass is left: it runs down
}

ServiceDistribution::ServiceDistribution(double half_life)
    : decay_(half_life > 0.0 ? std::pow(0.5, 1.0 / half_life) : 1.0) {
  if (!(half_life >= 0.0)) throw std::invalid_argument("half_life must be >= 0");
}

void ServiceDistribution::observe(int klass, double size, double w) {
  pooled_.observe(size, decay_, w);
  ++version_;
  if (klass < 0 || klass >= kMaxClasses) return;
  if (klass >= int(classes_.size())) classes_.resize(klass + 1);
  classes_[klass].observe(size, decay_, w);
}

const ServiceHistogram* ServiceDistribution::pick(int klass) const {
  if (klass >= 0 && klass < int(classes_.size()) && classes_[klass].count() >= kMinCount)
    return &classes_[klass];
  return &pooled_;
}

double ServiceDistribution::rank(int klass, double a) const { return pick(klass)->rank(a); }

double ServiceDistribution::count(int klass) const {
  if (klass < 0) return pooled_.count();
  return klass < int(classes_.size()) ? classes_[klass].count() : 0.0;
}

}  // namespace pyserve
