// Online distribution of completed programs' total service and its Gittins ranks (gittins).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

namespace pyserve {

/// Decayed histogram of one class's program sizes (total service, seconds) on log-spaced bins,
/// with the Gittins rank at every bin edge, rebuilt lazily after new observations.
///
/// Bins: bin 0 = [0, kLow), bin k = [kLow·r^(k-1), kLow·r^k) with r = sqrt(2), the last one
/// unbounded. Each bin keeps its (decayed) mass, the mass-weighted sum of its sizes and the
/// smallest and largest size seen in it: the mass sits at the bin's mean and completes, at the
/// latest, at the bin's upper edge (at its one value when two or more sizes seen in the bin were
/// all equal, so point masses are exact). A threshold counts once kMinMass (decayed) programs
/// complete by it, so a few tiny sizes cannot claim a huge index.
class ServiceHistogram {
 public:
  static constexpr int kBins = 48;
  static constexpr double kLow = 1e-4;  // seconds
  static constexpr double kRatio = 1.4142135623730951;
  static constexpr double kMinMass = 16.0;  // observations a threshold needs (see rebuild)

  /// Adds one size with weight `w` (> 0); earlier sizes decay by `decay` per call (lazily).
  void observe(double size, double decay, double w = 1.0);
  /// Effective number of observations (decayed weights summed; a new one counts 1).
  double count() const { return total_ / scale_; }
  /// Gittins rank of a program that attained `a` seconds of service: the least expected service
  /// still to invest per unit of completion probability, min over Δ of E[min(S-a, Δ) | S > a] /
  /// P(S - a <= Δ | S > a). The Gittins index is its inverse (higher index runs earlier, so lower
  /// rank runs earlier). Beyond the largest size seen the rank is `a` (nothing is known: the
  /// program ranks as large as what it has already used).
  double rank(double a) const;
  /// Bin holding size s.
  static int bin_of(double s);
  /// Lower edge of bin k (0 for bin 0).
  static double edge(int k);

 private:
  void rebuild() const;

  std::array<double, kBins> mass_{}, sum_{}, lo_{}, hi_{};
  std::array<uint64_t, kBins> seen_{};  // observations ever (a point mass needs two equal ones)
  double total_ = 0.0;                  // summed mass (in units of scale_)
  double scale_ = 1.0;  // weight of a new observation (grows instead of decaying the rest)
  double max_ = 0.0;    // largest size seen
  // NOTE: derived from the bins above; valid when !stale_ (rebuilt on the next rank query).
  mutable std::array<double, kBins> rank_at_{};  // rank at edge(k); < 0 when no mass >= edge(k)
  mutable bool stale_ = true;
};

/// Per-class histograms plus a pooled one (every observation goes to both).
/// NOTE: a class with fewer than kMinCount effective observations ranks from the pooled one.
class ServiceDistribution {
 public:
  static constexpr double kMinCount = 16.0;
  static constexpr int kMaxClasses = 64;

  /// An observation's weight halves every `half_life` later observations of its histogram
  /// (default 500 completed programs); 0 disables the decay.
  explicit ServiceDistribution(double half_life = 500.0);

  /// Records a completed program of class `klass` (< 0: unknown, pooled only).
  void observe(int klass, double size, double w = 1.0);
  /// Gittins rank (seconds, lower runs earlier) of attained service `a` in class `klass`.
  /// With no observation at all it is `a` itself (least attained service first).
  double rank(int klass, double a) const;
  /// Effective observations of a class (< 0: the pooled histogram).
  double count(int klass) const;
  /// Number of observations so far (changes whenever any rank may have changed).
  uint64_t version() const { return version_; }

 private:
  const ServiceHistogram* pick(int klass) const;
  double decay_;  // per-observation factor, 2^(-1 / half_life)
  ServiceHistogram pooled_;
  std::vector<ServiceHistogram> classes_;
  uint64_t version_ = 0;
};

}  // namespace pyserve
