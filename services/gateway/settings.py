"""Gateway settings, from ``TUNEPLEX_GATEWAY_*`` environment variables."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings, is_loopback
from services.gateway.fine_tuning.owners import DEFAULT_OWNER, check_owner_names

CPU_ENGINE_CONCURRENCY = 8
GPU_ENGINE_CONCURRENCY = 256


def nvidia_gpu_visible() -> bool:
    """Whether the NVIDIA driver is present, the way the engine would find a GPU; the gateway
    never imports torch to ask."""
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEPLEX_GATEWAY_", extra="ignore")

    port: int = Field(8000, description="HTTP port of the OpenAI-compatible API.")

    registry_target: str = Field("127.0.0.1:50051", description="Registry gRPC address.")
    registry_api_key: SecretStr | None = Field(None, description="Bearer key for the registry.")
    registry_timeout_s: float = Field(30.0, description="Deadline of one registry call.")

    api_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='More bearer keys, each with an owner name, as JSON: `{"team-a": '
        '"sk-a", "team-b": "sk-b"}`. Each name owns the files, fine-tuning jobs and '
        "fine-tuned models its key creates and sees only those; `api_key` is owner `default`.",
    )
    trainer_target: str | None = Field(
        None,
        description="Trainer gRPC address: serves the fine-tuning API (`/v1/fine_tuning/jobs`). "
        "Unset: those routes answer that fine-tuning is not enabled here.",
    )
    trainer_api_key: SecretStr | None = Field(None, description="Bearer key for the trainer.")
    trainer_timeout_s: float = Field(30.0, gt=0, description="Deadline of one trainer call.")

    base_models: list[str] = Field(
        default_factory=lambda: ["smollm2-135m-instruct"],
        description="Base models to serve: registry model refs (`name`, `name@3`, pulled into "
        "the cache) or local HF folder paths (served under the folder's name).",
    )
    engine_urls: list[str] = Field(
        default_factory=list,
        description="Attach to vLLM servers already running (k8s) instead of starting them. "
        "They must see the adapter cache at the same path as the gateway (a shared volume).",
    )
    engines_per_model: int = Field(1, ge=1, description="Local vLLM servers per base model.")
    engine_port_start: int = Field(
        0,
        description="First loopback port for local engines. 0 (the default): each listens on a "
        "unix socket only the gateway's user can reach, and opens no port.",
    )
    engine_start_timeout_s: float = Field(600.0, description="How long vLLM may take to start.")
    engine_health_interval_s: float = Field(5.0, description="Health poll of each engine.")

    max_loras: int = Field(4, ge=1, description="vLLM --max-loras: adapters in one batch.")
    max_cpu_loras: int | None = Field(
        None,
        description="vLLM --max-cpu-loras: adapters kept in engine memory. The gateway keeps at "
        "most this many registered per engine and unloads the least recently used beyond it. "
        "Defaults to max_loras.",
    )
    max_lora_rank: int = Field(16, description="vLLM --max-lora-rank.")
    dtype: str = Field("float32", description="vLLM --dtype (float32 on CPUs without bf16).")
    max_model_len: int | None = Field(None, description="vLLM --max-model-len.")
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE for CPU engines.")
    engine_extra_args: list[str] = Field(default_factory=list, description="More vLLM flags.")

    cache_dir: Path | None = Field(None, description="Adapter/model cache; default HOME/cache.")
    cache_max_bytes: int = Field(20 * 2**30, description="Adapter cache size before LRU eviction.")
    resolve_ttl_s: float = Field(
        0.0,
        description="How long a mutable ref (`name`, `name@alias`) stays resolved. 0 asks the "
        "registry on every request, so a moved alias is served on the next request.",
    )

    request_timeout_s: float = Field(600.0, description="Upstream deadline of one request.")
    max_concurrent_per_engine: int | None = Field(
        None,
        ge=1,
        description="Requests in flight per engine; more wait in a queue, bounded by "
        "max_queue_time_s. Unset: 8 when no NVIDIA GPU is visible (a vLLM-cpu engine serves "
        "about that many at once; more in flight only lengthens every answer), else 256 "
        "(vLLM's own --max-num-seqs default on GPUs).",
    )
    max_queue_per_engine: int = Field(
        512, ge=0, description="Requests waiting per engine before 429."
    )
    max_queue_time_s: float = Field(
        10.0,
        ge=0,
        description="Backpressure: a request whose expected wait for an engine slot (from how "
        "long recent requests held one) is longer than this gets 429 with `retry-after` at "
        "once instead of queueing. Set it to your clients' timeout minus a typical request's "
        "duration; 0 turns it off (only max_queue_per_engine bounds the line).",
    )
    default_max_tokens: int = Field(
        1024,
        ge=1,
        description="`max_tokens` of a request that gives none (or null): without it the "
        "engine generates until the context is full. Cut to the engine's context length.",
    )
    on_demand_engines: int = Field(
        1,
        ge=0,
        description="Engines the gateway may start on demand, beside its base models' own: for "
        "a model asked by name that is in the registry but not a served base (an export, a new "
        "base), and for an adapter vLLM cannot load at runtime (DoRA, modules_to_save, a rank "
        "above max_lora_rank), served from its merged model. At the limit, an idle one makes "
        "room. 0 turns it off. Only for engines the gateway starts (not with engine_urls).",
    )
    on_demand_idle_s: float = Field(
        600.0, gt=0, description="An on-demand engine with no request for this long is stopped."
    )
    on_demand_wait_s: float = Field(
        120.0,
        ge=0,
        description="How long a request waits for an on-demand model to be ready (its merge by "
        "the trainer, its engine's start) before it gets 503 with `retry-after`; the work goes "
        "on, and a later request finds it further along.",
    )
    engine_api_key: SecretStr | None = Field(
        None,
        description="Bearer key of attached engines (vLLM `--api-key`). Engines the gateway "
        "starts get a new random key each start, and a private unix socket instead of a port.",
    )

    @model_validator(mode="after")
    def _key_required_off_loopback(self) -> GatewaySettings:
        # Replaces ServiceSettings' rule of the same name: `api_keys` protect the port too.
        if self.api_key is None and not self.api_keys and not is_loopback(self.host):
            raise ValueError(
                f"binding to {self.host} without an API key would expose the service: set "
                "TUNEPLEX_GATEWAY_API_KEY or TUNEPLEX_GATEWAY_API_KEYS, or bind to 127.0.0.1"
            )
        if self.api_key is not None and not self.api_key.get_secret_value():
            raise ValueError("api_key is set but empty")
        keys = {n: k.get_secret_value() for n, k in self.api_keys.items()}
        check_owner_names(keys)
        if self.api_key is not None and self.api_key.get_secret_value() in keys.values():
            # One key, two owners: its objects would be `default`'s, not the named team's.
            raise ValueError("api_key is also one of api_keys; give each key once")
        return self

    @model_validator(mode="after")
    def _check_loras(self) -> GatewaySettings:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be >= max_loras (vLLM refuses otherwise)")
        return self

    @property
    def engine_concurrency(self) -> int:
        """max_concurrent_per_engine, or the default of the devices this gateway's engines run
        on."""
        if self.max_concurrent_per_engine is not None:
            return self.max_concurrent_per_engine
        return GPU_ENGINE_CONCURRENCY if nvidia_gpu_visible() else CPU_ENGINE_CONCURRENCY

    @property
    def adapter_capacity(self) -> int:
        return self.max_cpu_loras or self.max_loras

    @property
    def cache_path(self) -> Path:
        return self.cache_dir or self.home / "cache"

    def engine_api_key_value(self) -> str | None:
        return self.engine_api_key.get_secret_value() if self.engine_api_key else None

    def registry_api_key_value(self) -> str | None:
        return self.registry_api_key.get_secret_value() if self.registry_api_key else None

    def trainer_api_key_value(self) -> str | None:
        return self.trainer_api_key.get_secret_value() if self.trainer_api_key else None

    def owner_keys(self) -> dict[str, str]:
        """Owner name -> key, every key this gateway accepts; empty when none is set."""
        keys = {name: key.get_secret_value() for name, key in self.api_keys.items()}
        if self.api_key is not None:
            keys[DEFAULT_OWNER] = self.api_key.get_secret_value()
        return keys
