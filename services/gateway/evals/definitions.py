"""`/v1/evals`: eval definitions kept as registry `eval_definition` artifacts.

An eval `eval_<24 hex>` is the artifact of that name; its latest version's one file
(`eval.json`) holds the request's fields as given (plus `created_at`), and its
`tuneplex.owner` label says whose it is. An update is a new version: a run made before it keeps
the criteria it was made with (its eval job carries the graders). The testing criteria are
validated by the evaluation room's rules at create, so a definition that is stored can be run.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, shown
from services.common.eval_definition import DEFINITION_FILE, check_definition
from services.evaluation.graders import judge_models, referenced_databases
from services.gateway.evals import criteria, data_source, names
from services.gateway.evals.protocol import (
    EvalCreateRequest,
    EvalDeleted,
    EvalList,
    EvalObject,
    EvalUpdateRequest,
)
from services.gateway.fine_tuning.jobs import check_metadata
from services.gateway.fine_tuning.names import OWNER_LABEL
from services.gateway.fine_tuning.paging import after_cursor, page_fields
from services.gateway.fine_tuning.upstream import registry_outage
from services.gateway.resolver import NeedsMerge, visible_to

if TYPE_CHECKING:
    from services.client.registry import AsyncRegistryClient
    from services.gateway.resolver import ModelResolver

KIND = "eval_definition"
CONFIG = "data_source_config"
# What `{{sample.*}}` holds for a run here (OpenAI's `include_sample_schema`).
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"model": {"type": "string"}, "output_text": {"type": "string"}},
    "required": ["model", "output_text"],
}


def eval_not_found(eval_id: str) -> NotFound:
    return NotFound(f"No such eval: {shown(eval_id)}", param="eval_id", code="eval_not_found")


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `custom` data source config, as stored (the other types read OpenAI's stored
    completions, which a tuneplex gateway does not keep)."""
    kind = config.get("type")
    if kind in ("logs", "stored_completions"):
        raise InvalidArgument(
            f"{CONFIG}.type {kind} reads stored completions, which this gateway does not keep; "
            "use type custom with an item_schema",
            param=f"{CONFIG}.type",
            code="unsupported_data_source",
        )
    if kind != "custom":
        raise InvalidArgument(f"{CONFIG}.type must be custom", param=f"{CONFIG}.type")
    unknown = sorted(set(config) - {"type", "item_schema", "include_sample_schema"})
    if unknown:
        raise InvalidArgument(
            f"unknown field {CONFIG}.{unknown[0]}"[:300], param=f"{CONFIG}.{unknown[0]}"[:100]
        )
    if "item_schema" not in config:
        raise InvalidArgument(
            f"{CONFIG}.item_schema is required: the JSON schema of each row's item",
            param=f"{CONFIG}.item_schema",
        )
    data_source.check_item_schema(config["item_schema"], f"{CONFIG}.item_schema")
    sample = config.get("include_sample_schema", False)
    if not isinstance(sample, bool):
        raise InvalidArgument(
            f"{CONFIG}.include_sample_schema must be a boolean",
            param=f"{CONFIG}.include_sample_schema",
        )
    return {"type": "custom", "item_schema": config["item_schema"], "include_sample_schema": sample}


@dataclass(frozen=True)
class Definition:
    eval_id: str
    owner: str
    value: dict[str, Any]  # eval.json

    @property
    def item_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = self.value[CONFIG]["item_schema"]
        return schema

    def graders(self) -> list[dict[str, Any]]:
        return criteria.grader_specs(self.value["testing_criteria"])

    def criterion_names(self) -> list[str]:
        return [
            str(c.get("name") or names.criterion_name(i))
            for i, c in enumerate(self.value["testing_criteria"])
        ]

    def openai(self) -> EvalObject:
        config = self.value[CONFIG]
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {"item": config["item_schema"]},
            "required": ["item"],
        }
        if config.get("include_sample_schema"):
            schema["properties"]["sample"] = SAMPLE_SCHEMA
            schema["required"].append("sample")
        return EvalObject(
            id=self.eval_id,
            created_at=int(self.value.get("created_at") or 0),
            data_source_config={"type": "custom", "schema": schema},
            metadata=self.value["metadata"] or None,
            name=self.value["name"],
            testing_criteria=self.value["testing_criteria"],
        )


class EvalStore:
    def __init__(self, registry: AsyncRegistryClient, resolver: ModelResolver):
        self._registry = registry
        self._resolver = resolver

    async def create(self, owner: str, request: EvalCreateRequest) -> EvalObject:
        config = check_config(request.data_source_config)
        # Refused now, not at the first run.
        await self.check_resources(owner, criteria.grader_specs(request.testing_criteria))
        value = {
            "name": request.name or "",
            CONFIG: config,
            "testing_criteria": request.testing_criteria,
            "metadata": check_metadata(request.metadata),
            "created_at": int(time.time()),
        }
        eval_id = names.new_eval_id()
        await self._push(eval_id, owner, value)
        return Definition(eval_id, owner, value).openai()

    async def check_resources(self, owner: str, graders: list[dict[str, Any]]) -> None:
        """The judges and databases the criteria name must be ones `owner` may use: the eval
        workers reach them with the operator's key, which may use every owner's."""
        for model in judge_models(graders):
            try:
                await self._resolver.resolve(model, owner=owner)
            except NeedsMerge:
                continue  # served through its merged model
            except NotFound:
                raise InvalidArgument(
                    f"{criteria.PARAM}: the judge model {shown(model)} does not exist or is not "
                    "served here",
                    param=criteria.PARAM,
                    code="model_not_found",
                ) from None
        for ref in referenced_databases(graders):
            try:
                with registry_outage("resolve"):
                    version = await self._registry.resolve("dataset", ref)
            except (NotFound, InvalidArgument):
                version = None
            if version is None or not visible_to(version.labels, owner):
                raise InvalidArgument(
                    f"{criteria.PARAM}: no database {shown(ref)} in the registry",
                    param=criteria.PARAM,
                    code="database_not_found",
                )

    async def definition(self, owner: str, eval_id: str) -> Definition:
        """`eval_id`'s latest definition when `owner` owns it; 404 otherwise (another owner's
        eval reads exactly as an unknown one)."""
        if not names.is_eval_id(eval_id):
            raise eval_not_found(eval_id)
        try:
            with registry_outage("resolve"):
                version = await self._registry.resolve(KIND, eval_id)
        except (NotFound, InvalidArgument):
            raise eval_not_found(eval_id) from None
        if version.labels.get(OWNER_LABEL) != owner:
            raise eval_not_found(eval_id)
        with registry_outage("read"):
            raw = await self._registry.read_file(
                KIND, f"{eval_id}@{version.version}", DEFINITION_FILE
            )
        value = json.loads(raw)
        broken = check_definition(value)
        if broken is not None:  # not one this gateway wrote
            raise FailedPrecondition(
                f"eval {eval_id} is not in the shape of an eval definition ({broken})",
                param="eval_id",
                code="eval_definition_invalid",
            )
        return Definition(eval_id, owner, value)

    async def retrieve(self, owner: str, eval_id: str) -> EvalObject:
        return (await self.definition(owner, eval_id)).openai()

    async def update(self, owner: str, eval_id: str, request: EvalUpdateRequest) -> EvalObject:
        current = await self.definition(owner, eval_id)
        value = dict(current.value)
        if request.name is not None:
            value["name"] = request.name
        if request.metadata is not None:
            value["metadata"] = check_metadata(request.metadata)
        await self._push(eval_id, owner, value)
        return Definition(eval_id, owner, value).openai()

    async def delete(self, owner: str, eval_id: str) -> EvalDeleted:
        await self.definition(owner, eval_id)
        with registry_outage("delete"):
            await self._registry.delete(KIND, eval_id, force=True)
        return EvalDeleted(eval_id=eval_id)

    async def list(
        self, owner: str, *, after: str | None, limit: int, order: str, order_by: str
    ) -> EvalList:
        with registry_outage("list"):
            artifacts = await self._registry.list(KIND, labels={OWNER_LABEL: owner})
        artifacts = [a for a in artifacts if names.is_eval_id(a.name)]

        def key(a: Any) -> tuple[int, str]:
            stamp = a.update_time if order_by == "updated_at" else a.create_time
            return (stamp.seconds * 10**9 + stamp.nanos, a.name)

        artifacts.sort(key=key, reverse=order == "desc")
        rest = after_cursor(artifacts, after, lambda a: a.name)
        page = rest[:limit]
        data = [await self.retrieve(owner, a.name) for a in page]
        return EvalList(data=data, **page_fields(data, len(rest) > len(page)))

    async def _push(self, eval_id: str, owner: str, value: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="tuneplex-eval-") as tmp:
            path = Path(tmp) / DEFINITION_FILE
            await asyncio.to_thread(path.write_text, json.dumps(value, ensure_ascii=False))
            with registry_outage("upload"):
                await self._registry.push(
                    KIND,
                    eval_id,
                    path,
                    labels={OWNER_LABEL: owner},
                    description=value["name"][:200],
                )
