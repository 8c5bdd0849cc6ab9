"""What an eval definition's one file (`eval.json`) holds, shared by the registry (which checks
its shape on upload) and the gateway (which writes it from OpenAI's `/v1/evals` request and
reads it back for every run).

The registry checks the shape only: what the criteria mean is the evaluation room's business
(`validate_graders`), checked by the gateway before the push and by the trainer when a run's
eval job is admitted.
"""

from __future__ import annotations

from typing import Any

DEFINITION_FILE = "eval.json"
# OpenAI's shape: the request's own fields, as the eval object returns them.
REQUIRED = {
    "name": str,
    "data_source_config": dict,
    "testing_criteria": list,
    "metadata": dict,
}
MAX_CRITERIA = 32


def check_definition(value: Any) -> str | None:
    """Why ``value`` is not an eval definition, or None when its shape is one."""
    if not isinstance(value, dict):
        return "an eval definition is a JSON object"
    for key, kind in REQUIRED.items():
        if not isinstance(value.get(key), kind):
            return f"{key!r} must be a JSON {'array' if kind is list else kind.__name__}"
    config = value["data_source_config"]
    if not isinstance(config.get("item_schema"), dict):
        return "'data_source_config.item_schema' must be a JSON object (a JSON schema)"
    if not all(isinstance(v, str) for v in value["metadata"].values()):
        return "'metadata' values must be strings"
    if not isinstance(value.get("created_at", 0), int):
        return "'created_at' must be an integer"
    criteria = value["testing_criteria"]
    if not criteria or len(criteria) > MAX_CRITERIA:
        return f"'testing_criteria' must hold 1 to {MAX_CRITERIA} graders"
    if not all(isinstance(c, dict) for c in criteria):
        return "every testing criterion is a JSON object"
    return None
