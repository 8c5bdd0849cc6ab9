"""Gateway metrics (prometheus.io naming: `gateway_` prefix, base units, no unbounded labels).

Labels are limited to route, HTTP status, load result and load phase; adapter and model names
are deliberately absent because users can mint them freely in the registry.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "gateway_requests_total", "HTTP requests answered, by route and status.", ["route", "status"]
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time from request arrival to the last byte of the response.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gateway_time_to_first_token_seconds",
    "Time from request arrival to the first streamed token (whole response when not streaming).",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("gateway_prompt_tokens_total", "Prompt tokens, from upstream usage.")
COMPLETION_TOKENS = Counter(
    "gateway_completion_tokens_total", "Completion tokens, from upstream usage."
)
IN_FLIGHT = Gauge("gateway_requests_in_flight", "Requests being proxied to engines.")

ADAPTER_LOADS = Counter(
    "gateway_adapter_loads_total",
    "Adapter loads into an engine: loaded (for a request), reloaded (after an engine "
    "restart), warmed (ahead of an alias move), failed.",
    ["result"],
)
ADAPTER_LOAD_DURATION = Histogram(
    "gateway_adapter_load_duration_seconds",
    "Cold adapter load time by phase: fetch (registry download, sha256-checked while "
    "streaming), verify (sha256 of the cached files before loading), load (vLLM).",
    ["phase"],
    buckets=_LATENCY_BUCKETS,
)
ADAPTER_UNLOADS = Counter(
    "gateway_adapter_unloads_total", "Adapters unloaded from an engine to make room."
)
CACHE_HITS = Counter("gateway_adapter_cache_hits_total", "Adapter files found in the disk cache.")
CACHE_MISSES = Counter(
    "gateway_adapter_cache_misses_total", "Adapter files fetched from the registry."
)
CACHE_EVICTIONS = Counter(
    "gateway_adapter_cache_evictions_total",
    "Cache entries removed: lru (over the byte budget) or corrupt (sha256 mismatch).",
    ["reason"],
)
CACHE_BYTES = Gauge("gateway_adapter_cache_bytes", "Bytes held in the adapter cache.")
ENGINE_RESTARTS = Counter(
    "gateway_engine_restarts_total", "vLLM engines brought back after a crash or outage."
)
ENGINES_READY = Gauge("gateway_engines_ready", "vLLM engines ready to serve.")
REQUESTS_REFUSED = Counter(
    "gateway_requests_refused_total",
    "Requests answered 429 at once because their expected wait for an engine was too long "
    "(max_queue_time_s) or its waiting line was full (max_queue_per_engine).",
)
ON_DEMAND_ENGINES = Gauge(
    "gateway_on_demand_engines", "Engines started on demand for a model, running now."
)
ON_DEMAND_STARTS = Counter(
    "gateway_on_demand_engine_starts_total", "Engines started on demand, by why.", ["reason"]
)
ON_DEMAND_STOPS = Counter(
    "gateway_on_demand_engine_stops_total",
    "On-demand engines stopped: idle past on_demand_idle_s, evicted to make room, or "
    "never_ready (not up after engine_start_timeout_s + on_demand_idle_s).",
    ["reason"],
)
MERGES = Counter(
    "gateway_adapter_merges_total",
    "Merges of adapters vLLM cannot load at runtime: `asked` each time a request found none "
    "and asked the trainer (one export job per adapter version), `succeeded` / `failed` as a "
    "waiting request saw it end.",
    ["outcome"],
)
