"""Push and pull of a 100 MB adapter through tuneplex (gRPC client -> registry -> S3) against
the raw ``minio`` SDK put/get on the same S3-compatible server (moto, on loopback), in one run.
Pulls are measured both ways: streamed through the registry (a second registry on the same
bucket with direct transfers off) and direct (presigned URLs, parallel ranges from S3).

tuneplex does more than move bytes: the client hashes every file before sending, the registry
hashes, checks the safetensors header and every float for NaN/Inf while streaming, and writes
a manifest and a metadata row; a pull is verified by the registry and again by the client.

    .venv/bin/python benchmarks/registry_throughput.py [--mb 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.client.registry import RegistryClient  # noqa: E402
from tests.helpers.registry_artifacts import TINY_MODEL, write_adapter, write_model  # noqa: E402
from tests.helpers.registry_process import start_moto_s3, start_registry  # noqa: E402

# Metrics off: a benchmark's registry must not take the default metrics port (9090).
NO_REGISTRY_METRICS = {"TUNEPLEX_REGISTRY_METRICS_PORT": "0"}
CHUNK = 2 * 1024 * 1024


def raw_put(s3, bucket: str, key: str, path: Path) -> None:
    with open(path, "rb") as f:
        s3.put_object(bucket, key, f, path.stat().st_size)


def raw_get(s3, bucket: str, key: str, dest: Path) -> None:
    response = s3.get_object(bucket, key)
    try:
        with open(dest, "wb") as f:
            for data in response.stream(CHUNK):
                f.write(data)
    finally:
        response.close()
        response.release_conn()


def raw_put_sha256(s3, bucket: str, key: str, path: Path) -> None:
    """What a raw-SDK user adds for the same integrity: hash first, store the digest along."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * CHUNK):
            digest.update(block)
    with open(path, "rb") as f:
        s3.put_object(bucket, key, f, path.stat().st_size, metadata={"sha256": digest.hexdigest()})


def raw_get_sha256(s3, bucket: str, key: str, dest: Path) -> None:
    """...and verify while downloading, keeping the file only when it matches."""
    expected = s3.stat_object(bucket, key).metadata["x-amz-meta-sha256"]
    digest = hashlib.sha256()
    response = s3.get_object(bucket, key)
    try:
        with open(dest.with_suffix(".part"), "wb") as f:
            for data in response.stream(CHUNK):
                f.write(data)
                digest.update(data)
    finally:
        response.close()
        response.release_conn()
    if digest.hexdigest() != expected:
        raise RuntimeError("corrupted download")
    dest.with_suffix(".part").rename(dest)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="adapter size in MB")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each; the median counts")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    s3 = start_moto_s3()
    server = streaming = None
    try:
        adapter = write_adapter(work / "adapter", size_bytes=args.mb * 1000 * 1000)
        weights = adapter / "adapter_model.safetensors"
        size = sum(p.stat().st_size for p in adapter.iterdir())
        server = start_registry(
            work / "home",
            env={**s3.registry_env(bucket="tuneplex-bench"), **NO_REGISTRY_METRICS},
        )
        streaming = start_registry(
            work / "home-streaming",
            env={
                **s3.registry_env(bucket="tuneplex-bench"),
                **NO_REGISTRY_METRICS,
                "TUNEPLEX_REGISTRY_DIRECT_TRANSFERS": "false",
            },
        )
        client = RegistryClient(server.target)
        client.push("model", TINY_MODEL, write_model(work / "model"))
        streamed = RegistryClient(streaming.target)
        streamed.push("model", TINY_MODEL, write_model(work / "model"))
        streamed.push("adapter", "bench-lora", adapter)
        raw = s3.minio()
        raw.make_bucket("raw-bench")

        ops = ("tp_push", "tp_pull", "tp_stream", "raw_put", "raw_get", "sha_put", "sha_get")
        times: dict[str, list[float]] = {k: [] for k in ops}
        out = work / "raw.out"
        for i in range(args.rounds):  # interleaved, so drift on a shared machine hits all
            times["raw_put"].append(timed(raw_put, raw, "raw-bench", f"o{i}", weights))
            times["sha_put"].append(timed(raw_put_sha256, raw, "raw-bench", f"s{i}", weights))
            start = time.perf_counter()
            pushed = client.push("adapter", "bench-lora", adapter)
            times["tp_push"].append(time.perf_counter() - start)
            times["raw_get"].append(timed(raw_get, raw, "raw-bench", f"o{i}", out))
            out.unlink()
            times["sha_get"].append(timed(raw_get_sha256, raw, "raw-bench", f"s{i}", out))
            out.unlink()
            ref = f"bench-lora@{pushed.version}"
            times["tp_pull"].append(timed(client.pull, "adapter", ref, work / "pulled"))
            shutil.rmtree(work / "pulled")
            times["tp_stream"].append(timed(streamed.pull, "adapter", "bench-lora", work / "s"))
            shutil.rmtree(work / "s")
        client.close()
        streamed.close()

        mb = size / 1e6
        rate = {k: mb / statistics.median(v) for k, v in times.items()}
        print(
            f"adapter: {mb:.1f} MB (adapter_config.json + adapter_model.safetensors) on moto S3, "
            f"{args.rounds} rounds interleaved, median"
        )
        print(
            f"{'':10s}{'via gRPC':>12s}{'direct':>12s}{'raw minio':>12s}{'gRPC/raw':>10s}"
            f"{'direct/raw':>11s}{'raw+sha256':>13s}{'direct/sha':>11s}"
        )
        for op, grpc_op, direct_op, rw, sh in (
            ("push/put", "tp_push", None, "raw_put", "sha_put"),
            ("pull/get", "tp_stream", "tp_pull", "raw_get", "sha_get"),
        ):
            best = direct_op or grpc_op  # what a client of this registry gets
            direct = f"{rate[direct_op]:>7.1f} MB/s" if direct_op else f"{'-':>12s}"
            direct_ratio = f"{rate[direct_op] / rate[rw]:>10.2f}x" if direct_op else f"{'-':>11s}"
            print(
                f"{op:10s}{rate[grpc_op]:>7.1f} MB/s{direct}{rate[rw]:>7.1f} MB/s"
                f"{rate[grpc_op] / rate[rw]:>9.2f}x{direct_ratio}"
                f"{rate[sh]:>8.1f} MB/s{rate[best] / rate[sh]:>10.2f}x"
            )
        print(
            "push: client sha256 + registry sha256/NaN scan/manifest/metadata, over gRPC (no "
            "direct uploads yet).\npull via gRPC: registry and client sha256, bytes through the "
            "registry; direct: presigned URLs, one stream per file (ranges from 256 MiB), client "
            "sha256.\n"
            "raw+sha256: the raw SDK plus the hashing a user needs for the same integrity (hash "
            "before put, verify on get); direct/sha compares the best tuneplex path with it."
        )
    finally:
        if server is not None:
            server.stop()
        if streaming is not None:
            streaming.stop()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
