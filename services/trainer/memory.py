"""Peak-memory estimate of a training job, before it is queued.

Terms, per training device:
- base weights: parameters x bytes of the load dtype (4-bit for qlora: 0.5 byte + ~6% for the
  quantization constants);
- trainable weights, gradients and AdamW states: the adapter's parameters (``adapter_params``:
  LoRA's A and B, DoRA's magnitudes, IA3's vectors, LoHa's four and LoKr's factors; or every
  parameter for full fine-tuning) held in fp32 with fp32 gradients and two fp32 moments (m, v);
  full fine-tuning in mixed precision is the classic 16 bytes/parameter (2 half weights + 2
  half grads + 4 master + 8 moments, ZeRO paper, Rajbhandari et al. 2020);
- activations: per layer s*b*h*K bytes in fp32, halved in 16-bit, with K = ACTIVATION_BYTES
  calibrated (below). Korthikanti et al. 2022 ("Reducing Activation Recomputation") count
  s*b*h*(34 + 5*a*s/h) in 16-bit for a GPT layer; ours differ: the a*s/h term is the attention
  matrix, which torch's sdpa kernels (flash on CPU and CUDA) never keep (measured: batch 1 x 1024
  tokens peaks where batch 2 x 512 does), and LoRA's dropout keeps a copy of every adapted
  linear layer's input, SwiGLU keeps intermediate-sized tensors, RMSNorm works in fp32.
  With gradient checkpointing only each layer's input (2*s*b*h in 16-bit) is kept plus one
  layer recomputed;
- LoHa and LoKr build each adapted module's whole weight update (out x in, fp32) in the forward
  pass and the linear layer that applies it keeps it for the backward pass: one per adapted
  module of every layer, or of the one layer recomputed with gradient checkpointing
  (``adapter_weight_updates``; derived, not calibrated);
- logits: b*s*vocab in fp32, LOGITS_COPIES times (calibrated; the loss is computed in fp32 and
  for a small model with a large vocabulary this is the largest per-token term);
- multi-GPU: model states from DeepSpeed's ``estimate_zero2/3_model_states_mem_needs`` (no
  offload) applied to the trainable parameters, frozen weights replicated (ZeRO-2) or sharded
  (ZeRO-3);
- a fixed framework overhead (CUDA context / Python + torch, TRL, datasets and the tokenizer).
- DPO: a batch of b pairs is 2b sequences (each pair's preferred and non-preferred answer after
  its prompt) through the adapter, so activations and logits count 2b; and the reference (the
  base with the adapter disabled, the same weights: no second copy) runs a forward pass of those
  2b sequences without gradients while the adapter's activations are alive: one layer's
  activations and one logits tensor more (``reference_forward``; derived, not calibrated).

The peak is checked against what is free for the job on the device it runs on (a GPU when it
trains on GPUs, the host's memory on the CPU): the device's memory less the estimates of the
jobs that may run beside it there (``held_beside``).

Calibrated on the CPU (``benchmarks/memory_estimate.py``: the SFT recipe's peak RSS, rows filling
max_seq_length, SmolLM2-135M in fp32; table in docs/trainer.md): ACTIVATION_BYTES, LOGITS_COPIES
and CPU_TRAINING_OVERHEAD, fitted so that every measured configuration's estimate
is 1.0-1.11x its peak. Not calibrated (no GPU to measure on): the halving in 16-bit, the CUDA
overhead, the multi-GPU and 4-bit terms, which keep their derivations above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.errors import FailedPrecondition, ResourceExhausted, TuneplexError
from services.trainer.device import DeviceInfo
from services.trainer.spec import TrainingConfig, ia3_feedforward_modules

GIB = 1024**3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
NF4_BYTES = 0.5 * 1.0625
CUDA_OVERHEAD = int(0.75 * GIB)
CPU_OVERHEAD = int(1.0 * GIB)
# Python + torch + transformers/TRL/datasets and the tokenizer in a training worker: the intercept
# of the measured peaks less the fp32 weights (the export estimate keeps its own 1 GiB).
CPU_TRAINING_OVERHEAD = int(0.55 * GIB)
# fp32 bytes a layer keeps per token and hidden unit for the backward pass (26 fp32 values: the
# linear inputs and LoRA dropout copies, q/k/v before and after RoPE, the attention output,
# SwiGLU's intermediate-sized tensors, RMSNorm in fp32). Fitted with LOGITS_COPIES on the
# difference gradient checkpointing makes (it drops all but one layer's activations).
ACTIVATION_BYTES = 104
# b*s*vocab fp32 tensors alive at the peak: the logits, the loss's log-softmax, both gradients,
# TRL's entropy and token-accuracy metrics over the full logits, and what the allocator keeps of
# their temporaries. Calibrated (the count the measured peaks need), not derived.
LOGITS_COPIES = 15
# Past an exbibyte every job is equally impossible; capping each term there keeps the peak (the
# sum of a handful of terms) within the int64 fields of EstimateJobMemoryResponse for any spec
# that validates, however large its batch, sequence or model.
MAX_TERM_BYTES = 2**60


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only transformer, read from its ``config.json``."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        hidden = config["hidden_size"]
        heads = config["num_attention_heads"]
        return cls(
            hidden=hidden,
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            intermediate=config.get("intermediate_size") or 4 * hidden,
            vocab=config["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def linear_layers(self) -> list[tuple[str, int, int]]:
        """(name, in_features, out_features) of one decoder layer's linear modules."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return [
            ("q_proj", h, q),
            ("k_proj", h, kv),
            ("v_proj", h, kv),
            ("o_proj", q, h),
            ("gate_proj", h, i),
            ("up_proj", h, i),
            ("down_proj", i, h),
        ]

    def layer_params(self) -> int:
        return sum(a * b for _, a, b in self.linear_layers()) + 2 * self.hidden

    def total_params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_params() + embeddings + self.hidden

    def targeted(self, targets: tuple[str, ...]) -> list[tuple[str, int, int]]:
        """The linear modules of one layer that ``targets`` adapts."""
        if "all-linear" in targets:
            return self.linear_layers()
        return [layer for layer in self.linear_layers() if layer[0] in targets]

    def lora_params(self, r: int, targets: tuple[str, ...]) -> int:
        return self.layers * sum(r * (a + b) for _, a, b in self.targeted(targets))

    def ia3_params(self, targets: tuple[str, ...]) -> int:
        """One vector per adapted module: of its inputs for a feed-forward module, else of its
        outputs (PEFT's ``ia3_l``, [1, in] or [out, 1])."""
        feedforward = ia3_feedforward_modules(targets)
        return self.layers * sum(
            a if name in feedforward else b for name, a, b in self.targeted(targets)
        )

    def loha_params(self, r: int, targets: tuple[str, ...]) -> int:
        """Two low-rank products (``hada_w1_a/b``, ``hada_w2_a/b``): 2 * r * (in + out)."""
        return self.layers * sum(2 * r * (a + b) for _, a, b in self.targeted(targets))

    def lokr_params(self, r: int, targets: tuple[str, ...]) -> int:
        return self.layers * sum(lokr_module_params(r, a, b) for _, a, b in self.targeted(targets))

    def weight_update_params(self, targets: tuple[str, ...]) -> int:
        """The size of one layer's adapted weight matrices (what LoHa and LoKr rebuild)."""
        return sum(a * b for _, a, b in self.targeted(targets))


def _factorization(dimension: int) -> tuple[int, int]:
    """PEFT's ``lokr.layer.factorization`` with its default factor (-1), step for step: the
    divisor pair (m <= n, m * n = dimension) nearest the square root."""
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        m, n = new_m, dimension // new_m
    return (n, m) if m > n else (m, n)


def lokr_module_params(r: int, in_features: int, out_features: int) -> int:
    """LoKr's parameters for one linear module with PEFT's defaults (``decompose_both`` off,
    ``decompose_factor`` -1): W = kron(w1, w2) with w1 [out_l, in_m] full and w2 [out_k, in_n]
    full, or as the low-rank product w2_a @ w2_b when r is below half its larger side. Those
    defaults are what ``peft_config`` builds; another factor or decompose_both would change
    the count."""
    in_m, in_n = _factorization(in_features)
    out_l, out_k = _factorization(out_features)
    w1 = out_l * in_m
    w2 = out_k * in_n if r >= max(out_k, in_n) / 2 else r * (out_k + in_n)
    return w1 + w2


def adapter_params(config: TrainingConfig, shape: ModelShape) -> int:
    """The trainable parameters of the spec's adapter."""
    targets = config.target_modules
    if config.method == "ia3":
        return shape.ia3_params(targets)
    if config.method == "loha":
        return shape.loha_params(config.lora_r, targets)
    if config.method == "lokr":
        return shape.lokr_params(config.lora_r, targets)
    trainable = shape.lora_params(config.lora_r, targets)
    if config.method == "dora":
        # DoRA adds one magnitude vector per adapted module (out_features each).
        trainable += shape.layers * sum(o for _, _, o in shape.targeted(targets))
    return trainable


# (job id, estimated peak bytes) of the jobs that may run beside a new one on its device.
Held = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class ActiveJob:
    """A job admitted and not finished yet, and the device its estimate is on."""

    job_id: str
    device: str
    peak_bytes: int


def held_beside(active: Sequence[ActiveJob], device: str, slots: int) -> Held:
    """The jobs whose memory a new job on ``device`` must leave free: with ``slots`` jobs
    running at once, the ``slots - 1`` largest of those admitted there and not finished (a
    queued one may start beside it as well as a running one), the most the queue can put
    beside it. Each admitted job was checked the same way, so any ``slots`` of them fit
    together."""
    there = sorted((j for j in active if j.device == device), key=lambda j: -j.peak_bytes)
    return tuple((j.job_id, j.peak_bytes) for j in there[: max(0, slots - 1)])


@dataclass(frozen=True)
class MemoryEstimate:
    terms: tuple[tuple[str, int], ...]
    # What is free for this job: the device's memory less what ``held`` holds.
    available_bytes: int
    device: str
    held: Held = ()

    @property
    def peak_bytes(self) -> int:
        return sum(b for _, b in self.terms)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.available_bytes

    @property
    def held_bytes(self) -> int:
        return sum(b for _, b in self.held)

    @property
    def fits_alone(self) -> bool:
        """Whether it would fit were the jobs beside it finished."""
        return self.peak_bytes <= self.available_bytes + self.held_bytes


def _estimate(
    terms: tuple[tuple[str, int], ...], memory_bytes: int, device: str, held: Held
) -> MemoryEstimate:
    free = max(0, memory_bytes - sum(b for _, b in held))
    return MemoryEstimate(terms=terms, available_bytes=free, device=device, held=held)


def room(est: MemoryEstimate) -> str:
    """The memory the job was checked against, and who holds the rest of the device."""
    if not est.held:
        return f"{est.device} has {est.available_bytes / GIB:.1f} GiB"
    holders = ", ".join(f"{job} {b / GIB:.1f} GiB" for job, b in est.held)
    total = (est.available_bytes + est.held_bytes) / GIB
    return (
        f"{est.device} has {est.available_bytes / GIB:.1f} GiB free for it ({total:.1f} GiB "
        f"less what the jobs that may run beside it hold: {holders})"
    )


def refusal(est: MemoryEstimate, message: str, param: str) -> TuneplexError:
    """``FailedPrecondition`` when the job cannot fit the device at all (the spec must
    change); ``ResourceExhausted`` when it fits but not beside the jobs admitted before it,
    which then says that waiting for them (or cancelling them) works too."""
    if est.held and est.fits_alone:
        jobs = ", ".join(job for job, _ in est.held)
        have, them = ("have", "them") if len(est.held) > 1 else ("has", "it")
        return ResourceExhausted(
            f"{message}; or create it again once {jobs} {have} finished (or cancel {them})",
            param=param,
            code="out_of_memory",
        )
    return FailedPrecondition(message, param=param, code="out_of_memory")


def layer_activation_bytes(config: TrainingConfig, shape: ModelShape, sequences: int) -> float:
    """What one layer keeps for the backward pass of ``sequences`` sequences."""
    half = 1 if config.precision == "fp32" else 0.5  # K counts fp32 activations
    return config.max_seq_length * sequences * shape.hidden * ACTIVATION_BYTES * half


def activation_bytes(config: TrainingConfig, shape: ModelShape, batch: int) -> int:
    s, b, h = config.max_seq_length, batch, shape.hidden
    half = 1 if config.precision == "fp32" else 0.5  # K counts fp32 activations
    full_layer = layer_activation_bytes(config, shape, batch)
    if config.gradient_checkpointing:
        per_model = shape.layers * 4 * s * b * h * half + full_layer
    else:
        per_model = shape.layers * full_layer
    return int(per_model)


def estimate_memory(
    config: TrainingConfig,
    shape: ModelShape,
    device: DeviceInfo,
    *,
    batch: int | None = None,
    held: Held = (),
) -> MemoryEstimate:
    batch = batch or config.batch_size
    total = shape.total_params()
    gpus = max(1, config.num_gpus)
    if config.is_adapter:
        trainable = adapter_params(config, shape)
        frozen_bytes = total * (
            NF4_BYTES if config.method == "qlora" else DTYPE_BYTES[config.precision]
        )
        state_bytes_per_param = 16  # fp32 weight + fp32 grad + fp32 m + fp32 v
    else:
        trainable, frozen_bytes = total, 0
        state_bytes_per_param = 16
    if gpus > 1 and config.zero_stage == 3:
        largest_layer = max(shape.layer_params(), shape.vocab * shape.hidden)
        states = 4 * largest_layer + 18 * trainable / gpus  # DeepSpeed ZeRO-3, no offload
        frozen_bytes /= gpus
    elif gpus > 1:
        states = 4 * trainable + 16 * trainable / gpus  # DeepSpeed ZeRO-2, no offload
    else:
        states = state_bytes_per_param * trainable
    # DPO trains on both answers of each pair: 2 sequences per example of the batch.
    sequences = batch * (2 if config.is_preference else 1)
    one_logits = sequences * config.max_seq_length * shape.vocab * 4
    terms: list[tuple[str, float]] = [
        ("base_weights", frozen_bytes),
        ("trainable_weights_gradients_optimizer", states),
        ("activations", activation_bytes(config, shape, sequences)),
        ("logits", LOGITS_COPIES * one_logits),
    ]
    if config.is_preference:
        reference = layer_activation_bytes(config, shape, sequences) + one_logits
        terms.append(("reference_forward", reference))
    if config.method in ("loha", "lokr"):
        kept = 1 if config.gradient_checkpointing else shape.layers
        updates = kept * shape.weight_update_params(config.target_modules) * 4
        terms.append(("adapter_weight_updates", updates))
    terms.append(("framework_overhead", CUDA_OVERHEAD if device.cuda else CPU_TRAINING_OVERHEAD))
    return _estimate(_capped(*terms), device.memory_bytes, device.name, held)


def _capped(*terms: tuple[str, float]) -> tuple[tuple[str, int], ...]:
    return tuple((name, min(int(value), MAX_TERM_BYTES)) for name, value in terms)


def checkpoint_if_needed(
    config: TrainingConfig, shape: ModelShape, device: DeviceInfo, held: Held = ()
) -> TrainingConfig:
    """``config`` with gradient checkpointing turned on when the job does not fit in memory
    without it and does with it; as given otherwise. Recomputing activations costs about a
    third more compute, so it is never on by default where memory does not ask for it (TRL
    turns it on always); the job's spec shows the choice."""
    if config.gradient_checkpointing or estimate_memory(config, shape, device, held=held).fits:
        return config
    checkpointed = config.model_copy(update={"gradient_checkpointing": True})
    return checkpointed if estimate_memory(checkpointed, shape, device, held=held).fits else config


def require_fit(
    config: TrainingConfig, shape: ModelShape, device: DeviceInfo, held: Held = ()
) -> MemoryEstimate:
    """The estimate, or an error saying how many GiB are missing, who holds the rest of the
    device and what to lower (``refusal``)."""
    est = estimate_memory(config, shape, device, held=held)
    if est.fits:
        return est
    over = (est.peak_bytes - est.available_bytes) / GIB
    biggest = max(est.terms, key=lambda t: t[1])[0]
    fitting_batch = next(
        (
            b
            for b in _halvings(config.batch_size)
            if estimate_memory(config, shape, device, batch=b, held=held).fits
        ),
        None,
    )
    if fitting_batch:
        advice = (
            f"lower batch_size to {fitting_batch} (raise gradient_accumulation_steps to keep the "
            f"effective batch), lower max_seq_length, or turn on gradient_checkpointing"
        )
        param = "training.hyperparameters.batch_size"
    elif biggest in ("activations", "logits"):
        advice = "lower max_seq_length, and turn on gradient_checkpointing with batch_size 1"
        param = "training.hyperparameters.max_seq_length"
    else:
        advice = "use a smaller base model, method lora/qlora instead of full, or more GPUs"
        param = "training.method"
    raise refusal(
        est,
        f"the job needs an estimated {est.peak_bytes / GIB:.1f} GiB but {room(est)} "
        f"({over:.1f} GiB short; largest term: {biggest}); {advice}",
        param,
    )


def _halvings(batch: int) -> list[int]:
    out, b = [], batch // 2
    while b >= 1:
        out.append(b)
        b //= 2
    return out


def gib(value: int) -> float:
    return math.floor(value / GIB * 100) / 100


def estimate_export_memory(
    shape: ModelShape,
    load_dtype: str,
    output_dtype: str,
    host_memory_bytes: int,
    held: Held = (),
) -> MemoryEstimate:
    """Peak host memory of a merge (exports run on the CPU): the base weights at their load
    dtype, about as much again for the merge's temporaries, the cast to the output dtype and
    save_pretrained's shard buffers (measured by ``benchmarks/export.py``: ~2x the weights),
    plus the framework."""
    total = shape.total_params()
    weights = total * DTYPE_BYTES[load_dtype]
    terms = _capped(
        ("base_weights", weights),
        ("merge_cast_and_save_buffers", max(weights, total * DTYPE_BYTES[output_dtype])),
        ("framework_overhead", CPU_OVERHEAD),
    )
    return _estimate(terms, host_memory_bytes, "cpu", held)


def require_export_fit(est: MemoryEstimate) -> MemoryEstimate:
    if est.fits:
        return est
    raise refusal(
        est,
        f"merging needs an estimated {est.peak_bytes / GIB:.1f} GiB of host memory but "
        f"{room(est)}; export on a machine with more memory",
        "export.adapter",
    )


# Prompt tokens an eval item is assumed to carry, for the KV cache of a local generation
# batch (eval prompts are questions, not documents; a longer one only costs a larger cache).
EVAL_PROMPT_TOKENS = 512
EVAL_GENERATION_BATCH = 8
# A gateway-backed eval worker holds items, results and HTTP clients: no weights at all.
EVAL_CLIENT_BYTES = int(0.5 * GIB)


def estimate_eval_memory(
    shape: ModelShape | None,
    backend: str,
    max_tokens: int,
    device: DeviceInfo,
    held: Held = (),
) -> MemoryEstimate:
    """Peak memory of an eval worker. Through the gateway: the worker's own Python process.
    Generating locally (``recipes/generate.py``): the base weights (fp32 on the CPU, bf16 on
    CUDA; a LoRA adapter is small next to them), the KV cache of one generation batch of
    ``EVAL_GENERATION_BATCH`` items of ``EVAL_PROMPT_TOKENS`` + ``max_tokens`` tokens, that
    batch's last-position logits, and the framework. Kept simple on purpose: what decides
    whether it fits is the weights."""
    if backend == "gateway" or shape is None:
        return _estimate(
            (("eval_client", EVAL_CLIENT_BYTES),), device.memory_bytes, device.name, held
        )
    dtype = DTYPE_BYTES["bf16" if device.cuda else "fp32"]
    tokens = EVAL_GENERATION_BATCH * (EVAL_PROMPT_TOKENS + max_tokens)
    kv_cache = tokens * shape.layers * 2 * shape.kv_heads * shape.head_dim * dtype
    terms = _capped(
        ("base_weights", shape.total_params() * dtype),
        ("kv_cache", kv_cache),
        ("logits", EVAL_GENERATION_BATCH * shape.vocab * 4 * 2),
        ("framework_overhead", CUDA_OVERHEAD if device.cuda else CPU_OVERHEAD),
    )
    return _estimate(terms, device.memory_bytes, device.name, held)


def require_eval_fit(est: MemoryEstimate) -> MemoryEstimate:
    if est.fits:
        return est
    raise refusal(
        est,
        f"generating the answers in the worker needs an estimated {est.peak_bytes / GIB:.1f} "
        f"GiB but {room(est)}; evaluate through a gateway that serves the model (backend "
        "gateway) or on a machine with more memory",
        "evaluation.backend",
    )
