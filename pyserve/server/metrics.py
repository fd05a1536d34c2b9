"""Prometheus metrics, named like vLLM's with a ``pyserve:`` prefix.

Each app gets its own ``CollectorRegistry`` (several servers may live in one process, e.g. in
tests). Request-level histograms and token counters are observed by the server when a request
finishes; engine-level values (queue sizes, KV usage, prefix cache, preemptions, step times) are
read from ``EngineClient.stats()`` at scrape time by a custom collector.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from pyserve.engine.outputs import RequestOutput

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                   5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
PROGRAM_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _EngineCollector:
    """Turns the latest engine stats snapshot into gauges, counters and the step histogram."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.snapshot: dict = {}

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(f"pyserve:{name}", doc, labels=["model_name"])
        g.add_metric([self.model_name], value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(f"pyserve:{name}", doc, labels=["model_name"])
        c.add_metric([self.model_name], value)
        return c

    def collect(self):
        s = self.snapshot
        if not s:
            return
        total = s.get("gpu_blocks_total", 0) or 1
        used = s.get("gpu_blocks_used", 0)
        yield self._gauge("num_requests_running", "Requests in the running batch.",
                          s.get("num_running", 0))  # fmt: skip
        yield self._gauge("num_requests_waiting", "Requests waiting to be scheduled.",
                          s.get("num_waiting", 0))  # fmt: skip
        yield self._gauge("num_requests_swapped", "Requests swapped out to CPU memory.",
                          s.get("num_swapped", 0))  # fmt: skip
        yield self._gauge("kv_cache_usage_perc", "Fraction of KV blocks in use (0..1).",
                          used / total)  # fmt: skip
        yield self._gauge("kv_cache_blocks_used", "KV blocks held by live requests.", used)
        yield self._gauge("kv_cache_blocks_total", "KV blocks in the cache.", total)
        yield self._gauge("num_programs", "Programs (sessions) started and not ended.",
                          s.get("num_programs", 0))  # fmt: skip
        yield self._counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                            s.get("prefix_query_tokens", 0))  # fmt: skip
        yield self._counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                            s.get("prefix_hit_tokens", 0))  # fmt: skip
        yield self._counter("num_preemptions", "Preemptions (recompute and swap).",
                            s.get("num_preemptions_recompute", 0)
                            + s.get("num_preemptions_swap", 0))  # fmt: skip
        yield self._counter("engine_step_failures", "Engine steps that raised.",
                            s.get("step_failures", 0))  # fmt: skip
        if "sim_steps" in s:  # executor sim: how far the host is behind the simulated GPU
            yield self._gauge("sim_step_lag_seconds", "Wall minus simulated-GPU time at the end "
                              "of the last step (executor sim).", s["sim_lag_seconds"])  # fmt: skip
            yield self._gauge("sim_max_lag_seconds", "The largest sim_step_lag_seconds seen.",
                              s["sim_lag_seconds_max"])  # fmt: skip
            yield self._counter("sim_late_steps", "Steps whose host work outlasted their "
                                "cost-model time (executor sim).", s["sim_late_steps"])  # fmt: skip
            yield self._counter("sim_steps", "Steps run (executor sim).", s["sim_steps"])
            yield self._counter("sim_modeled_seconds", "Cost-model seconds of all steps "
                                "(executor sim).", s["sim_modeled_seconds_total"])  # fmt: skip
        if "step_seconds_buckets" in s:
            yield self._step_histogram(s)

    def _step_histogram(self, s: dict) -> HistogramMetricFamily:
        h = HistogramMetricFamily("pyserve:scheduler_step_seconds",
                                  "Wall time of one engine step (schedule + execute + update).",
                                  labels=["model_name"])  # fmt: skip
        buckets = [(str(le), count) for le, count in s["step_seconds_buckets"]]
        buckets.append(("+Inf", s["step_seconds_count"]))
        h.add_metric([self.model_name], buckets, s["step_seconds_sum"])
        return h


class ServerMetrics:
    """The registry of one app and the request-level observations."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        reg, lbl = self.registry, ["model_name"]

        def hist(name: str, doc: str, buckets=LATENCY_BUCKETS) -> Histogram:
            return Histogram(f"pyserve:{name}", doc, lbl, registry=reg, buckets=buckets)

        self.prompt_tokens = Counter("pyserve:prompt_tokens", "Prefill tokens processed.", lbl,
                                     registry=reg)  # fmt: skip
        self.generation_tokens = Counter("pyserve:generation_tokens", "Tokens generated.", lbl,
                                         registry=reg)  # fmt: skip
        self.request_success = Counter("pyserve:request_success", "Finished requests.",
                                       [*lbl, "finished_reason"], registry=reg)  # fmt: skip
        self.request_errors = Counter("pyserve:request_errors", "Requests answered with an error.",
                                      [*lbl, "status"], registry=reg)  # fmt: skip
        self.http_started = Counter("pyserve:http_requests_started",
                                    "HTTP requests received (every path).", lbl,
                                    registry=reg)  # fmt: skip
        self.http_ended = Counter("pyserve:http_requests_ended",
                                  "HTTP requests ended, by outcome: completed, aborted (client "
                                  "left or engine abort) or rejected (an error answer).",
                                  [*lbl, "outcome"], registry=reg)  # fmt: skip
        self.timeouts = Counter("pyserve:http_timeouts",
                                "Connections or requests closed for a timeout, by phase (header: "
                                "request headers too slow; body: request body too slow).",
                                [*lbl, "phase"], registry=reg)  # fmt: skip
        for outcome in ("completed", "aborted", "rejected"):
            self.http_ended.labels(model_name, outcome)
        for phase in ("header", "body"):
            self.timeouts.labels(model_name, phase)
        self.ttft = hist("time_to_first_token_seconds", "Time to first token.")
        self.itl = hist("inter_token_latency_seconds", "Time between consecutive output tokens.")
        self.e2e = hist("e2e_request_latency_seconds", "Arrival to last token.")
        self.queue = hist("request_queue_time_seconds", "Arrival to first scheduled.")
        self.program = hist("program_latency_seconds", "Program start to end.", PROGRAM_BUCKETS)
        self.engine = _EngineCollector(model_name)
        reg.register(self.engine)

    def observe_finished(self, out: RequestOutput, count_prompt: bool = True) -> None:
        """Records a finished sequence; ``count_prompt`` once per prompt (not per choice)."""
        name = self.model_name
        if count_prompt:
            self.prompt_tokens.labels(name).inc(len(out.prompt_token_ids))
        self.generation_tokens.labels(name).inc(len(out.token_ids))
        self.request_success.labels(name, out.finish_reason or "unknown").inc()
        m = out.metrics
        if m is None:
            return
        for hist, value in ((self.ttft, m.ttft), (self.e2e, m.e2e_latency),
                            (self.queue, m.queue_time)):  # fmt: skip
            if value is not None:
                hist.labels(name).observe(value)
        itl = self.itl.labels(name)
        for gap in m.inter_token_times:
            itl.observe(gap)

    def observe_error(self, status: int) -> None:
        self.request_errors.labels(self.model_name, str(status)).inc()

    def request_started(self) -> None:
        """An HTTP request arrived (paired with exactly one request_ended)."""
        self.http_started.labels(self.model_name).inc()

    def request_ended(self, outcome: str) -> None:
        """An HTTP request ended: ``outcome`` is completed, aborted or rejected."""
        self.http_ended.labels(self.model_name, outcome).inc()

    def observe_timeout(self, phase: str) -> None:
        """A request (body) or connection (header) was closed for being too slow."""
        self.timeouts.labels(self.model_name, phase).inc()

    def observe_program(self, seconds: float) -> None:
        self.program.labels(self.model_name).observe(seconds)

    def render(self, engine_stats: dict) -> bytes:
        """The exposition text, with the engine part taken from ``engine_stats``."""
        self.engine.snapshot = engine_stats
        return generate_latest(self.registry)
