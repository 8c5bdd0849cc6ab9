"""`/v1/evals/{eval_id}/runs`: OpenAI eval runs as the trainer's eval jobs.

A run renders its rows through the eval's input templates into an eval set (the registry
dataset `evalset-<r>`), then queues an eval job that samples the named model through this
gateway, grades every item with the eval's criteria and publishes the EVALUATION `evalrun-<r>`.
Everything OpenAI's run object shows is read back from the job (status, its labels) and, once
it has completed, from that record (`result_counts`, `per_testing_criteria_results`, output
items): the gateway keeps no table of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.client.trainer import eval_spec
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TuneplexError,
    Unavailable,
    shown,
)
from services.common.eval_summary import RESULTS_FILE
from services.common.labels import MAX_VALUE_CHARS
from services.common.stubs import registry_pb2, trainer_pb2
from services.gateway.evals import data_source, names
from services.gateway.evals.criteria import templates_of
from services.gateway.evals.definitions import Definition, EvalStore
from services.gateway.evals.protocol import (
    CriterionResult,
    OutputItem,
    OutputItemList,
    ResultCounts,
    RunCreateRequest,
    RunError,
    RunList,
    RunObject,
)
from services.gateway.fine_tuning import names as ft_names
from services.gateway.fine_tuning.files import STORED_NAME, FileStore
from services.gateway.fine_tuning.jobs import check_metadata, metadata_label
from services.gateway.fine_tuning.paging import after_cursor, page_fields
from services.gateway.fine_tuning.upstream import TrainerAccess, registry_outage
from services.gateway.resolver import NeedsMerge, visible_to

if TYPE_CHECKING:
    from services.client.registry import AsyncRegistryClient
    from services.gateway.resolver import ModelResolver

log = logging.getLogger(__name__)

ITEMS_FILE = "items.jsonl"
RECORD_MISSING = "the run's record is no longer in the registry (it was deleted)"
RUN_PURPOSE = "eval-run"
STATUS = {
    trainer_pb2.JOB_STATE_QUEUED: "queued",
    trainer_pb2.JOB_STATE_VALIDATING: "in_progress",
    trainer_pb2.JOB_STATE_RUNNING: "in_progress",
    trainer_pb2.JOB_STATE_PAUSED: "queued",  # it runs again once resumed
    trainer_pb2.JOB_STATE_SUCCEEDED: "completed",
    trainer_pb2.JOB_STATE_FAILED: "failed",
    trainer_pb2.JOB_STATE_CANCELLED: "canceled",
}
Rows = list[dict[str, Any]]
Items = list[OutputItem]
# A completed run's (results, eval set lines), both in item order.
Record = tuple[Rows, Rows]
# Completed runs' records are immutable: a few are kept parsed for their output item pages.
_CACHED_RECORDS = 32


def run_not_found(run_id: str) -> NotFound:
    return NotFound(f"No such eval run: {shown(run_id)}", param="run_id", code="run_not_found")


def criterion_passed(result: dict[str, Any], name: str) -> bool:
    """A criterion passes an item when its grader says so; a grader with no pass rule of its
    own (a score_model without pass_threshold) passes only a full score."""
    verdict = result["passed"].get(name)
    if verdict is None:
        return bool(result["grader_scores"].get(name, 0.0) >= 1.0)
    return bool(verdict)


def item_status(result: dict[str, Any], graders: list[str]) -> str:
    if result["error"] is None and all(criterion_passed(result, g) for g in graders):
        return "pass"
    return "fail"


class EvalRuns:
    def __init__(
        self,
        trainer: TrainerAccess,
        evals: EvalStore,
        files: FileStore,
        registry: AsyncRegistryClient,
        resolver: ModelResolver,
    ):
        self._trainer = trainer
        self._evals = evals
        self._files = files
        self._registry = registry
        self._resolver = resolver
        self._records: OrderedDict[str, Record] = OrderedDict()

    # -- create --------------------------------------------------------------------------

    async def create(self, owner: str, eval_id: str, request: RunCreateRequest) -> RunObject:
        self._trainer.client  # noqa: B018 - refuse at once when the gateway has no trainer
        definition = await self._evals.definition(owner, eval_id)
        graders = definition.graders()
        await self._evals.check_resources(owner, graders)
        metadata = check_metadata(request.metadata)
        run_name = check_run_name(request.name)
        source = data_source.parse(request.data_source)
        model_ref = await self._model_ref(source.model, owner)
        rows = await self._rows(owner, source)
        # Off the event loop: a schema's patterns and 10,000 rows must not stall other requests.
        lines = await asyncio.to_thread(
            data_source.render_rows, rows, source, definition.item_schema, templates_of(graders)
        )
        run_data = names.new_run_data()
        # Built before anything is stored: what the spec refuses leaves nothing behind.
        spec = eval_spec(
            model_ref, "", graders, output_name=names.record_name(run_data), **source.sampling
        )
        labels = {
            ft_names.OWNER_LABEL: owner,
            names.EVAL_ID_LABEL: eval_id,
            names.RUN_DATA_LABEL: run_data,
        }
        items = names.eval_set_name(run_data)
        spec.eval_set = await self._push_items(items, lines, labels)
        labels |= {
            names.RUN_NAME_LABEL: run_name or source.model,
            names.RUN_MODEL_LABEL: source.model,
            names.DATA_SOURCE_LABEL: _data_source_label(request.data_source),
            ft_names.METADATA_LABEL: metadata_label(metadata),
        }
        try:
            job = await self._trainer.call(
                "create_job",
                spec,
                # A retried call (the first one's answer lost) finds its job, not a second one.
                idempotency_key=f"evalrun-{run_data}",
                labels={k: v for k, v in labels.items() if v},
            )
        except BaseException as exc:
            made = await self._made_anyway(run_data) if isinstance(exc, Unavailable) else None
            if made is None:
                await self._drop_items(items)  # nothing half-made stays
                raise
            job = made
        return await self._run_object(job, definition)

    async def _made_anyway(self, run_data: str) -> trainer_pb2.Job | None:
        """The job of a CreateJob whose answer was lost (a timeout), if the trainer made it."""
        try:
            found = await self._trainer.call(
                "list_jobs", trainer_pb2.JOB_STATE_UNSPECIFIED, 10,
                {names.RUN_DATA_LABEL: run_data},
            )
        except TuneplexError:
            return None
        return found[0] if found else None

    async def _model_ref(self, model: str, owner: str) -> str:
        """The registry ref the eval job pins: the adapter (a fine-tuned model, a checkpoint,
        any adapter the caller may use) or the base model."""
        unknown = InvalidArgument(
            f"The model {shown(model)} does not exist or is not served here",
            param="data_source.model",
            code="model_not_found",
        )
        try:
            resolved = await self._resolver.resolve(model, owner=owner)
        except NeedsMerge as needs:
            return needs.ref  # served through its merged model (on_demand.py), or refused then
        except NotFound:
            # A registry model no base covers is served on demand (on_demand.py).
            try:
                with registry_outage("resolve"):
                    version = await self._registry.resolve("model", model)
            except (NotFound, InvalidArgument):
                raise unknown from None
            if not visible_to(version.labels, owner):
                raise unknown from None
            return f"{version.name}@{version.version}"
        except FailedPrecondition as exc:  # e.g. an adapter for a base this gateway lacks
            param = "data_source.model"
            raise FailedPrecondition(exc.message, param=param, code=exc.code) from None
        if resolved.adapter is not None:
            return resolved.adapter.ref
        base = resolved.base
        return base.name if base.version is None else f"{base.name}@{base.version}"

    async def _rows(
        self, owner: str, source: data_source.Completions
    ) -> list[tuple[str, dict[str, Any]]]:
        if source.source["type"] == "file_content":
            return data_source.rows_inline(source.source["content"])
        param = "data_source.source.id"
        file_id = source.source["id"]
        version = await self._files.version(owner, file_id, param=param)
        if version.labels.get(ft_names.PURPOSE_LABEL) != "evals":
            raise InvalidArgument(
                f"{file_id} has purpose {version.labels.get(ft_names.PURPOSE_LABEL)}; an eval "
                "run reads a file uploaded with purpose evals",
                param=param,
                code="invalid_file",
            )
        if version.dataset.format != registry_pb2.DATASET_FORMAT_EVAL_ITEMS:
            raise InvalidArgument(
                f"{file_id} is not in OpenAI's eval format: each line an object "
                '{"item": {...}} (and an optional "sample")',
                param=param,
                code="invalid_file_format",
            )
        with registry_outage("read"):
            data = await self._registry.read_file(
                "dataset", ft_names.file_dataset_ref(file_id), STORED_NAME
            )
        filename = version.labels.get(ft_names.FILENAME_LABEL, STORED_NAME)
        return data_source.rows_from_jsonl(data, filename)

    async def _push_items(
        self, name: str, lines: list[dict[str, Any]], labels: dict[str, str]
    ) -> str:
        with tempfile.TemporaryDirectory(prefix="tuneplex-evalset-") as tmp:
            path = Path(tmp) / ITEMS_FILE
            text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
            await asyncio.to_thread(path.write_text, text)
            with registry_outage("upload"):
                version = await self._registry.push(
                    "dataset",
                    name,
                    path,
                    labels={**labels, ft_names.PURPOSE_LABEL: RUN_PURPOSE},
                    description="the rendered items of an OpenAI eval run",
                )
        return f"{version.name}@{version.version}"

    async def _drop_items(self, name: str) -> None:
        with contextlib.suppress(TuneplexError):
            await self._registry.delete("dataset", name, force=True)

    # -- read ----------------------------------------------------------------------------

    async def job(self, owner: str, eval_id: str, run_id: str) -> trainer_pb2.Job:
        trainer_id = names.trainer_job_id(run_id)
        if trainer_id is None:
            raise run_not_found(run_id)
        try:
            job: trainer_pb2.Job = await self._trainer.call("get_job", trainer_id)
        except (NotFound, InvalidArgument):
            raise run_not_found(run_id) from None
        if not _is_run_of(job, owner, eval_id):
            raise run_not_found(run_id)
        return job

    async def retrieve(self, owner: str, eval_id: str, run_id: str) -> RunObject:
        definition = await self._evals.definition(owner, eval_id)
        return await self._run_object(await self.job(owner, eval_id, run_id), definition)

    async def cancel(self, owner: str, eval_id: str, run_id: str) -> RunObject:
        definition = await self._evals.definition(owner, eval_id)
        job = await self.job(owner, eval_id, run_id)
        if STATUS.get(job.state) in ("queued", "in_progress"):
            job = await self._trainer.call("cancel_job", job.id)
        return await self._run_object(job, definition)

    async def list(
        self,
        owner: str,
        eval_id: str,
        *,
        after: str | None,
        limit: int,
        order: str,
        status: str | None,
    ) -> RunList:
        definition = await self._evals.definition(owner, eval_id)
        jobs = await self._trainer.call(
            "list_jobs",
            trainer_pb2.JOB_STATE_UNSPECIFIED,
            100,
            {ft_names.OWNER_LABEL: owner, names.EVAL_ID_LABEL: eval_id},
        )
        jobs = [j for j in jobs if _is_run_of(j, owner, eval_id)]
        if status:
            jobs = [j for j in jobs if STATUS.get(j.state, "queued") == status]
        jobs.sort(
            key=lambda j: (j.create_time.seconds, j.create_time.nanos, j.id),
            reverse=order == "desc",
        )
        rest = after_cursor(jobs, after, lambda j: names.run_id(j.id))
        page = [await self._run_object(j, definition) for j in rest[:limit]]
        return RunList(data=page, **page_fields(page, len(rest) > len(page)))

    async def output_items(
        self,
        owner: str,
        eval_id: str,
        run_id: str,
        *,
        after: str | None,
        limit: int,
        order: str,
        status: str | None,
    ) -> OutputItemList:
        definition = await self._evals.definition(owner, eval_id)
        job = await self.job(owner, eval_id, run_id)
        items = await self._output_items(job, definition)
        if status:
            items = [i for i in items if i.status == status]
        if order == "desc":
            items.reverse()
        rest = after_cursor(items, after, lambda i: i.id)
        page = rest[:limit]
        return OutputItemList(data=page, **page_fields(page, len(rest) > len(page)))

    async def output_item(
        self, owner: str, eval_id: str, run_id: str, output_item_id: str
    ) -> OutputItem:
        definition = await self._evals.definition(owner, eval_id)
        job = await self.job(owner, eval_id, run_id)
        index = names.output_item_index(output_item_id, job.id)
        items = await self._output_items(job, definition) if index is not None else []
        by_index = {item.datasource_item_id: item for item in items}
        if index not in by_index:
            raise NotFound(
                f"No such output item: {shown(output_item_id)}",
                param="output_item_id",
                code="output_item_not_found",
            )
        return by_index[index]

    # -- building the objects ------------------------------------------------------------

    async def _record(self, job: trainer_pb2.Job) -> Record:
        cached = self._records.get(job.output)
        if cached is not None:
            self._records.move_to_end(job.output)
            return cached
        with registry_outage("read"):
            results_raw = await self._registry.read_file("evaluation", job.output, RESULTS_FILE)
            lines_raw = await self._registry.read_file(
                "dataset", job.spec.evaluation.eval_set, ITEMS_FILE
            )
        results = sorted(
            (json.loads(line) for line in results_raw.splitlines() if line.strip()),
            key=lambda r: r["index"],
        )
        lines = [json.loads(line) for line in lines_raw.splitlines() if line.strip()]
        self._records[job.output] = (results, lines)
        while len(self._records) > _CACHED_RECORDS:
            self._records.popitem(last=False)
        return results, lines

    async def _run_object(self, job: trainer_pb2.Job, definition: Definition) -> RunObject:
        status = STATUS.get(job.state, "queued")
        labels = job.labels
        run = RunObject(
            id=names.run_id(job.id),
            created_at=job.create_time.seconds,
            data_source=_json(labels.get(names.DATA_SOURCE_LABEL)) or {},
            eval_id=definition.eval_id,
            metadata=_json(labels.get(ft_names.METADATA_LABEL)) or None,
            model=labels.get(names.RUN_MODEL_LABEL, ""),
            name=labels.get(names.RUN_NAME_LABEL, ""),
            status=status,
            result_counts=ResultCounts(total=job.progress.total_steps),
        )
        if status == "failed":
            run.error = RunError(code=job.error.code or "failed", message=job.error.message)
        if status == "completed" and job.output:
            try:
                results, _ = await self._record(job)
            except NotFound:  # its record or items were deleted from the registry since
                run.status = "failed"
                run.error = RunError(code="record_missing", message=RECORD_MISSING)
                return run
            graders = [names.criterion_name(i) for i in range(len(definition.criterion_names()))]
            run.evaluation = job.output
            run.result_counts = _counts(results, graders)
            run.per_testing_criteria_results = [
                CriterionResult(
                    testing_criteria=shown_name,
                    passed=sum(criterion_passed(r, g) for r in results),
                    failed=sum(not criterion_passed(r, g) for r in results),
                )
                for g, shown_name in zip(graders, definition.criterion_names(), strict=True)
            ]
        return run

    async def _output_items(self, job: trainer_pb2.Job, definition: Definition) -> Items:
        if STATUS.get(job.state) != "completed" or not job.output:
            return []
        try:
            results, lines = await self._record(job)
        except NotFound:
            return []
        criteria = definition.value["testing_criteria"]
        shown_names = definition.criterion_names()
        sampling = job.spec.evaluation.sampling
        model = job.labels.get(names.RUN_MODEL_LABEL, "")
        items = []
        for result in results:
            index = result["index"]
            graders = [names.criterion_name(i) for i in range(len(criteria))]
            error = None
            if result["error"]:
                code, _, message = str(result["error"]).partition(": ")
                error = {"code": code, "message": message or code}
            items.append(
                OutputItem(
                    id=names.output_item_id(job.id, index),
                    created_at=job.end_time.seconds,
                    datasource_item=lines[index]["item"],
                    datasource_item_id=index,
                    eval_id=definition.eval_id,
                    run_id=names.run_id(job.id),
                    status=item_status(result, graders),
                    results=[
                        {
                            "name": shown_names[i],
                            "type": criteria[i].get("type"),
                            "score": result["grader_scores"].get(g, 0.0),
                            "passed": criterion_passed(result, g),
                            "sample": None,
                        }
                        for i, g in enumerate(graders)
                    ],
                    sample={
                        "input": lines[index]["input"],
                        "output": [{"role": "assistant", "content": result["output_text"]}],
                        "model": model,
                        "finish_reason": "",
                        "error": error,
                        "temperature": sampling.temperature,
                        "max_completion_tokens": sampling.max_tokens,
                        "top_p": sampling.top_p,
                        "seed": sampling.seed,
                        # Token counts are not recorded per item (see docs/openai-evals.md).
                        "usage": {
                            "prompt_tokens": 0,
                            "completion_tokens": 0,
                            "total_tokens": 0,
                            "cached_tokens": 0,
                        },
                    },
                )
            )
        return items


def _counts(results: Rows, graders: list[str]) -> ResultCounts:
    errored = sum(1 for r in results if r["error"])
    passed = sum(1 for r in results if item_status(r, graders) == "pass")
    return ResultCounts(
        total=len(results), errored=errored, passed=passed, failed=len(results) - errored - passed
    )


def _is_run_of(job: trainer_pb2.Job, owner: str, eval_id: str) -> bool:
    return (
        job.labels.get(ft_names.OWNER_LABEL) == owner
        and job.labels.get(names.EVAL_ID_LABEL) == eval_id
        and job.spec.WhichOneof("kind") == "evaluation"
    )


def _json(value: str | None) -> Any:
    try:
        return json.loads(value or "null")
    except ValueError:
        return None


def _data_source_label(value: dict[str, Any]) -> str:
    """The data source as the run shows it; inline rows that would not fit a label are left
    out of it (they are in the run's eval set)."""
    # ASCII: a label value must be printable, and a prompt may hold any character.
    text = json.dumps(value, separators=(",", ":"))
    if len(text) <= MAX_VALUE_CHARS:
        return text
    source = dict(value.get("source") or {})
    source["content"] = []
    text = json.dumps({**value, "source": source}, separators=(",", ":"))
    if len(text) <= MAX_VALUE_CHARS:
        return text
    return json.dumps({k: value.get(k) for k in ("type", "model")}, separators=(",", ":"))


def check_run_name(name: str | None) -> str | None:
    if name is not None and not name.isprintable():
        raise InvalidArgument("name holds a non-printable character", param="name")
    return name
