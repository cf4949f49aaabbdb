"""The files of deploy/aws/ and deploy/orchestrator.ini, read, for the deploy tests that compare them."""

from __future__ import annotations

import json
from typing import Any, Final

from orchestrator.config import Config, load_config

from .promql import DEPLOY

IAM_POLICY: Final = DEPLOY / "aws" / "iam-policy.json"
TASK_DEFINITION: Final = DEPLOY / "aws" / "worker-task-definition.json"
ALB_TARGET_GROUP: Final = DEPLOY / "aws" / "alb-target-group.yml"
EXAMPLE_CONFIG: Final = DEPLOY / "orchestrator.ini"
REGION: Final = "us-east-1"


def read_json(path: Any) -> dict[str, Any]:
    document = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), path
    return document


def example_config() -> Config:
    """deploy/orchestrator.ini as the orchestrator reads it (no ``ORCH_*`` variable applied)."""
    return load_config(EXAMPLE_CONFIG, environ={})
