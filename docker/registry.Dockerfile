# syntax=docker/dockerfile:1
# tuneplex registry: gRPC on 50051. Build from the repo root:
#   docker build -f docker/registry.Dockerfile -t ghcr.io/tuneplex/registry:0.1.0 .
# No ML engine: the registry stores and verifies artifacts, it never loads a model.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The package's own dependencies pull torch (via peft/trl); the CPU wheel index keeps the
# multi-GiB CUDA libraries out of an image that never touches a GPU.
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
# The gRPC stubs are generated, not committed: install (which brings grpcio-tools at the pinned
# version), generate, then reinstall just tuneplex so the stubs are in site-packages.
RUN pip install . \
 && PYTHON=python bash scripts/gen_protos.sh \
 && pip install --no-deps --force-reinstall . \
 && python -c "import services.common.stubs"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# A numeric non-root user: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --gid 10001 tuneplex \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/tuneplex \
      --shell /usr/sbin/nologin tuneplex
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/tuneplex
USER 10001:10001
EXPOSE 50051
CMD ["python", "-m", "services.registry"]
