"""Two registry processes on one PostgreSQL database and one S3 bucket (moto's server mode):
what replicas behind one Service must keep true. Pushes of one name to both at once get
distinct, gap-free version numbers; every version reads the same from either; an alias moved
through one is what the other resolves. A registry whose database is unreachable does not
start, and says so without the URL's password.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

import grpc
import pytest

from services.client.registry import RegistryClient
from services.common.errors import InvalidArgument, NotFound
from tests.helpers.registry_process import start_moto_s3, start_registry
from tests.helpers.sample_data import chat_examples, write_jsonl

pytestmark = pytest.mark.integration

PUSHES_PER_REPLICA = 5


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, postgres_cluster):
    s3 = start_moto_s3(tmp_path_factory.mktemp("moto") / "moto.log")
    url = postgres_cluster.create_database("replicas")
    env = {**s3.registry_env(bucket="replicas"), "TUNEPLEX_REGISTRY_DATABASE_URL": url}
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(start_registry(tmp_path_factory.mktemp(f"replica-{name}"), env=env))
        yield servers
    finally:
        for server in servers:
            server.stop()
        s3.stop()


def test_concurrent_pushes_of_one_name_get_distinct_gapless_versions(replicas, tmp_path):
    pushed: dict[int, bytes] = {}  # version -> the bytes pushed as it
    by_replica: dict[int, str] = {}  # version -> the replica that numbered it
    errors: list[BaseException] = []
    start = threading.Barrier(len(replicas))

    def push_all(replica_index: int) -> None:
        server = replicas[replica_index]
        try:
            with RegistryClient(server.target, timeout=60) as client:
                start.wait()
                for i in range(PUSHES_PER_REPLICA):
                    seed = replica_index * 100 + i  # distinct bytes for every push
                    path = write_jsonl(chat_examples(4, seed=seed), tmp_path / f"{seed}.jsonl")
                    version = client.push("dataset", "shared-train", path).version
                    pushed[version] = path.read_bytes()
                    by_replica[version] = "ab"[replica_index]
        except Exception as exc:  # noqa: BLE001 - reported by the main thread's assertion
            errors.append(exc)

    threads = [threading.Thread(target=push_all, args=(i,)) for i in range(len(replicas))]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.monotonic() - began
    assert errors == []
    total = PUSHES_PER_REPLICA * len(replicas)
    assert sorted(pushed) == list(range(1, total + 1)), f"versions after {elapsed:.1f}s"
    order = "".join(by_replica[v] for v in sorted(by_replica))
    print(f"{total} concurrent pushes to 2 replicas in {elapsed:.2f}s, numbered by: {order}")

    for server in replicas:
        with RegistryClient(server.target, timeout=60) as client:
            listed = [v.version for v in client.versions("dataset", "shared-train")]
            assert sorted(listed) == list(range(1, total + 1)), server.target
            for version, data in pushed.items():
                dest = tmp_path / f"pulled-{server.target.rsplit(':', 1)[1]}-{version}"
                row = client.pull("dataset", f"shared-train@{version}", dest)
                (got,) = [p for p in dest.rglob("*") if p.is_file()]
                assert got.read_bytes() == data, (server.target, version)
                assert row.manifest.files[0].sha256 == hashlib.sha256(data).hexdigest()


def test_an_alias_moved_on_one_replica_is_seen_by_the_other(replicas, tmp_path):
    first, second = (RegistryClient(s.target, timeout=60) for s in replicas)
    with first, second:
        for seed in range(3):
            path = write_jsonl(chat_examples(3, seed=seed), tmp_path / f"{seed}.jsonl")
            first.push("dataset", "aliased", path)
        first.set_alias("dataset", "aliased", "prod", 2)
        assert second.resolve("dataset", "aliased@prod").version == 2
        second.set_alias("dataset", "aliased", "prod", 3)
        assert first.resolve("dataset", "aliased@prod").version == 3
        assert first.get("dataset", "aliased").aliases["prod"] == 3
        second.delete("dataset", "aliased", version=1)
        assert [v.version for v in first.versions("dataset", "aliased")] == [3, 2]


def test_unreachable_database_stops_the_start_without_showing_the_password(tmp_path):
    url = f"postgresql://tuneplex:hunter2-secret@/tuneplex?host={tmp_path}&port=1"
    with pytest.raises(Exception):  # noqa: B017 - the helper raises once the process exits
        start_registry(tmp_path / "home", env={"TUNEPLEX_REGISTRY_DATABASE_URL": url})
    log = (tmp_path / "home" / "registry.log").read_text()
    assert "metadata database is unreachable" in log
    assert "hunter2-secret" not in log


def test_text_postgresql_cannot_hold_is_invalid_argument(replicas, tmp_path):
    """A NUL in a description, or in an eval definition's name (its info, which every
    evaluations query reads as JSON), is the caller's error, not INTERNAL."""
    definition = tmp_path / "def"
    definition.mkdir()
    spec = {
        "name": "a\x00b",
        "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
        "testing_criteria": [{"type": "string_check", "name": "exact"}],
        "metadata": {},
    }
    (definition / "eval.json").write_text(json.dumps(spec))  # json writes the NUL as \u0000
    data = write_jsonl(chat_examples(2), tmp_path / "nul.jsonl")
    with RegistryClient(replicas[0].target, timeout=60) as client:
        with pytest.raises(InvalidArgument, match="control character U\\+0000") as exc:
            client.push("dataset", "nul-described", data, description="a\x00b")
        assert exc.value.mapping.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(InvalidArgument, match="control character U\\+0000") as exc:
            client.push("eval_definition", "nul-named", definition)
        assert exc.value.mapping.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
        for name in ("nul-described", "nul-named"):
            with pytest.raises(NotFound):
                client.get("eval_definition" if name == "nul-named" else "dataset", name)
