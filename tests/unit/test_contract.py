"""The producer's own messages (the shared contract) are accepted, and normalised as documented.

The contract lives in ``../shared/contract`` next to the repository; ``examples/backend`` holds
byte-for-byte copies, so that the repository alone can show (and test) what the backend sends. Every
message is checked through :class:`JobValidator` and through ``orchestrator validate``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import ValidationConfig
from orchestrator.messages import BuildJob, JobBase, SourceJob, encode
from orchestrator.validation import JobValidator, Rejection

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "contract"
COPIES = ROOT / "examples" / "backend"
CONTRACT = sorted(
    [*(SHARED.glob("*.json") if SHARED.is_dir() else ()), *COPIES.glob("*.json")],
    key=lambda p: (p.name, str(p)),
)
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.json") if "invalid" not in p.parts)
ATTACKS = sorted((ROOT / "examples" / "invalid").glob("*.json"))
COMMAND = shutil.which("orchestrator", path=str(Path(sys.executable).parent))
RUN_TIMEOUT = 60
#: What the orchestrator uses of a job; anything else the producer sends is dropped.
JOB_FIELDS = {
    "type",
    "deploymentId",
    "repository",
    "branch",
    "dockerFilePath",
    "composeFilePath",
    "contextDir",
    "createdAt",
    "portNumber",
    "autoDeploy",
}


def contract_id(path: Path) -> str:
    return f"{'shared' if path.parent == SHARED else 'copy'}:{path.name}"


def validate(raw: bytes, **rules: Any) -> JobBase | Rejection:
    return JobValidator(ValidationConfig(**rules)).validate(raw)


def normalised(sent: dict[str, Any]) -> dict[str, Any]:
    """The job as the orchestrator must see it, by the documented rules, from what the producer sent.

    An empty optional string is the field absent (so it takes its default and is not encoded), a
    ``./`` prefix of a path goes, ``portNumber`` becomes an integer, unknown fields are dropped.
    """
    job = {key: value for key, value in sent.items() if key in JOB_FIELDS and value != ""}
    for path in ("dockerFilePath", "composeFilePath", "contextDir"):
        if path in job:
            job[path] = job[path].removeprefix("./") or "."
    if "portNumber" in job:
        job["portNumber"] = int(job["portNumber"])
    if job.get("autoDeploy") is False:
        del job["autoDeploy"]  # the default, which encoding omits
    return job


def test_the_contract_is_here() -> None:
    assert {p.name for p in COPIES.glob("*.json")} >= {
        "seed-deployment-message.json",
        "backend-with-extra-fields.json",
    }


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared contract directory is not next to the repository")
def test_the_copies_are_byte_for_byte_the_shared_contract() -> None:
    shared = {p.name: p.read_bytes() for p in SHARED.glob("*.json")}
    copies = {p.name: p.read_bytes() for p in COPIES.glob("*.json")}
    assert shared
    assert copies == shared


@pytest.mark.parametrize("path", CONTRACT, ids=contract_id)
def test_every_contract_message_is_accepted_and_normalised(path: Path) -> None:
    raw = path.read_bytes()
    sent = json.loads(raw)
    job = validate(raw)
    assert not isinstance(job, Rejection), job.reasons
    assert json.loads(encode(job)) == normalised(sent)
    # the typed path (portNumber already an integer) and the plain one agree
    as_int = json.dumps({**sent, "portNumber": int(sent["portNumber"])}).encode()
    assert validate(as_int) == job
    without_extras = json.dumps({k: v for k, v in sent.items() if k in JOB_FIELDS}).encode()
    assert validate(without_extras, forbid_unknown_fields=True) == job


@pytest.mark.parametrize("path", CONTRACT, ids=contract_id)
def test_the_contract_form_as_the_seed_describes_it(path: Path) -> None:
    job = validate(path.read_bytes())
    assert isinstance(job, BuildJob)
    assert job.compose_file_path is None  # "" means there is no compose file
    assert job.port_number == 3000  # "3000", a decimal string
    assert job.docker_file_path == "Dockerfile"  # "./Dockerfile"
    assert job.context_dir == "."
    assert job.branch == "main"
    assert job.auto_deploy is True
    assert b"userId" not in encode(job)


def test_extra_producer_fields_are_refused_only_when_configured() -> None:
    raw = (COPIES / "backend-with-extra-fields.json").read_bytes()
    assert isinstance(validate(raw), SourceJob)
    rejection = validate(raw, forbid_unknown_fields=True)
    assert isinstance(rejection, Rejection)
    assert rejection.reasons == (
        "userId: unknown field for a build job (validation.forbid_unknown_fields is on)",
    )


def run_validate(path: Path) -> subprocess.CompletedProcess[str]:
    assert COMMAND is not None, f"no orchestrator command next to {sys.executable}; pip install -e . first"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    done = subprocess.run(
        [COMMAND, "validate", str(path)],
        capture_output=True,
        timeout=RUN_TIMEOUT,
        env=environ,
        cwd=ROOT,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")
    )


@pytest.mark.parametrize("path", CONTRACT, ids=contract_id)
def test_orchestrator_validate_accepts_every_contract_message(path: Path) -> None:
    result = run_validate(path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == normalised(json.loads(path.read_bytes()))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_every_example_is_valid(path: Path) -> None:
    outcome = validate(path.read_bytes())
    assert not isinstance(outcome, Rejection), outcome.reasons
    assert validate(encode(outcome)) == outcome


@pytest.mark.parametrize("path", ATTACKS, ids=lambda p: p.name)
def test_every_invalid_example_is_refused(path: Path) -> None:
    for rules in ({}, {"forbid_unknown_fields": True}):
        outcome = validate(path.read_bytes(), **rules)
        assert isinstance(outcome, Rejection)
        assert outcome.reasons
