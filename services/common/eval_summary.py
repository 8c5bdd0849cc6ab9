"""``summary.json`` of an EVALUATION version: written by the eval worker, parsed by the registry
into ``EvaluationInfo`` (what the promotion gate compares), read by ``experiments compare``.

One schema for all three so a field cannot mean two things. ``graders_sha256`` pins the exact
grader specs: two scores are comparable only when their digests are equal.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.jsonl"


def graders_digest(graders: list[dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of the (normalised) grader specs."""
    canonical = json.dumps(graders, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class EvalSummary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    model: str  # the evaluated version, name@version
    model_kind: Literal["adapter", "model"]
    eval_set: str  # name@version
    databases: list[str] = Field(default_factory=list)
    graders: list[dict[str, Any]]
    graders_sha256: str
    sampling: dict[str, Any]
    backend: Literal["gateway", "local"]
    score: float = Field(ge=0.0, le=1.0)
    ci_low: float = Field(ge=0.0, le=1.0)
    ci_high: float = Field(ge=0.0, le=1.0)
    ci_level: float = 0.95
    num_items: int = Field(ge=0)
    num_errors: int = Field(ge=0)
    grader_scores: dict[str, float] = Field(default_factory=dict)
    job_id: str = ""
    seconds: float = Field(ge=0.0)
    items_per_second: float = Field(ge=0.0)
    created_at: str  # ISO 8601, UTC
