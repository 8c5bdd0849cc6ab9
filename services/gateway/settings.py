"""Gateway settings, from ``TUNEPLEX_GATEWAY_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEPLEX_GATEWAY_", extra="ignore")

    port: int = Field(8000, description="HTTP port of the OpenAI-compatible API.")

    registry_target: str = Field("127.0.0.1:50051", description="Registry gRPC address.")
    registry_api_key: SecretStr | None = Field(None, description="Bearer key for the registry.")
    registry_timeout_s: float = Field(30.0, description="Deadline of one registry call.")

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
        0, description="First port for local engines; 0 picks free ports."
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
    max_concurrent_per_engine: int = Field(
        256, ge=1, description="Requests in flight per engine; more wait in a queue."
    )
    max_queue_per_engine: int = Field(
        512, ge=0, description="Requests waiting per engine before 429."
    )

    @model_validator(mode="after")
    def _check_loras(self) -> GatewaySettings:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be >= max_loras (vLLM refuses otherwise)")
        return self

    @property
    def adapter_capacity(self) -> int:
        return self.max_cpu_loras or self.max_loras

    @property
    def cache_path(self) -> Path:
        return self.cache_dir or self.home / "cache"

    def registry_api_key_value(self) -> str | None:
        return self.registry_api_key.get_secret_value() if self.registry_api_key else None
