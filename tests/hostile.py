"""A seeded corpus of hostile messages for the execute queue: bodies and headers an attacker would send.

Shared by the broker-level fuzz test (``tests/pipeline/test_fuzz.py``) and ``scripts/bench_hostile.py``.
Every message is one that must be refused: :func:`corpus` checks each body against the validator the
orchestrator runs and keeps a valid body only when its headers make it poison, so a correct
orchestrator launches nothing and dead-letters every message exactly once. Messages that carry a
credential carry a fresh random one, listed in :attr:`Hostile.secrets`: none may appear in any output.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pika

from orchestrator.config import Config, ValidationConfig
from orchestrator.messages import encode
from orchestrator.validation import JobValidator, Rejection

#: Every generated secret starts with it (and nothing else contains it), so a leak is found in one pass.
SECRET_MARKER = "S3CR3T"

VALID_JOB: dict[str, Any] = {
    "type": "build",
    "deploymentId": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    "repository": "https://github.com/user/repo",
    "branch": "main",
    "dockerFilePath": "./Dockerfile",
    "composeFilePath": "",
    "contextDir": ".",
    "createdAt": "2025-07-09T12:00:00Z",
    "portNumber": "3000",
    "autoDeploy": True,
}


class Hostile(NamedTuple):
    """One message: its body, its AMQP headers (or None), the secrets it carries, and its kind."""

    body: bytes
    headers: dict[str, Any] | None
    secrets: tuple[str, ...]
    kind: str


class _Maker:
    def __init__(self, rng: random.Random, max_bytes: int) -> None:
        self.rng = rng
        self.max_bytes = max_bytes

    def secret(self) -> str:
        return SECRET_MARKER + "".join(self.rng.choices(string.ascii_letters + string.digits, k=16))

    def deployment_id(self) -> str:
        return "fz-" + "".join(self.rng.choices(string.ascii_lowercase + string.digits, k=10))

    def job(self, **changes: Any) -> dict[str, Any]:
        job = dict(VALID_JOB, deploymentId=self.deployment_id())
        job.update(changes)
        return job

    # --- bodies -----------------------------------------------------------------------------------

    def random_bytes(self) -> Hostile:
        size = self.rng.choice((0, 1, 7, 100, 1000, 5000))
        return Hostile(self.rng.randbytes(size), None, (), "random-bytes")

    def not_utf8_with_secret(self) -> Hostile:
        secret = self.secret()
        body = b'{"type":"build","repository":"https://u:' + secret.encode() + b'@github.com/x"\xff\xfe}'
        return Hostile(body, None, (secret,), "not-utf8-with-secret")

    def not_an_object(self) -> Hostile:
        value: object = self.rng.choice(([1, 2], "build", 42, None, True, [], [{}], 1.5e300))
        return Hostile(json.dumps(value).encode(), None, (), "not-an-object")

    def deep_nesting(self) -> Hostile:
        depth = self.rng.choice((1000, 10_000, self.max_bytes // 2 - 10))
        opener, closer = self.rng.choice((("[", "]"), ('{"a":', "}")))
        return Hostile((opener * depth + "1" + closer * depth).encode(), None, (), "deep-nesting")

    def oversize(self) -> Hostile:
        secret = self.secret()
        filler = "a" * (self.max_bytes + self.rng.choice((1, 100, 50_000)))
        body = json.dumps(self.job(repository=f"https://u:{secret}@github.com/x", padding=filler))
        return Hostile(body.encode(), None, (secret,), "oversize")

    def max_size_invalid(self) -> Hostile:
        """Exactly ``max_bytes``: an invalid job padded with text built to slow a naive scanner."""
        job = self.job(deploymentId="../" + self.deployment_id(), x="")
        pattern = self.rng.choice(("a", "://", "a:", "@", "https://a", "%2e", "\\u0040", "token="))
        room = self.max_bytes - len(encode(job))
        job["x"] = (pattern * (room // len(pattern) + 1))[:room]
        body = encode(job)
        if len(body) > self.max_bytes:  # an escaped pattern encodes longer than it reads
            job["x"] = job["x"][: room - (len(body) - self.max_bytes)]
            body = encode(job)
        return Hostile(body, None, (), "max-size")

    def duplicate_keys(self) -> Hostile:
        job = self.job()
        text = encode(job).decode()
        key = self.rng.choice(('"type":"stop"', '"typ\\u0065":"stop"', '"deploymentId":"other"'))
        return Hostile(("{" + key + "," + text[1:]).encode(), None, (), "duplicate-keys")

    def credential_forms(self) -> Hostile:
        secret = self.secret()
        repository = self.rng.choice(
            (
                f"https://user:{secret}@github.com/o/r",
                f"https://{secret}@github.com/o/r",
                f"https://user:{secret[:8]}@{secret[8:]}@github.com/o/r",
                f"https://user:{secret[:8]}/{secret[8:]}@github.com/o/r",
                f"https://github.com/o/r?private_token={secret}",
                f"https://github.com/o/r?access_token={secret}",
                f"https://github.com/o/r?token={secret}&x=1",
                f"https://github.com/o/r?ci_job_token={secret}",
            )
        )
        text = encode(self.job(repository=repository)).decode()
        escape: Callable[[str], str] = self.rng.choice(
            (
                lambda t: t,
                lambda t: t.replace("/", "\\/"),
                lambda t: t.replace("@", "\\u0040"),
                lambda t: t.replace(":", "\\u003a"),
                lambda t: t.replace("@", "\\u0040").replace("/", "\\/").replace(":", "\\u003A"),
            )
        )
        return Hostile(escape(text).encode(), None, (secret,), "credentials")

    def injection(self) -> Hostile:
        field, value = self.rng.choice(
            (
                ("branch", "--upload-pack=touch /tmp/pwned"),
                ("branch", "+refs/heads/x"),
                ("branch", "HEAD"),
                ("branch", "main;rm -rf /"),
                ("branch", "ma\u202ein"),
                ("dockerFilePath", "../../etc/passwd"),
                ("dockerFilePath", "-f/etc/passwd"),
                ("dockerFilePath", "$(id)"),
                ("dockerFilePath", "%2e%2e/x"),
                ("dockerFilePath", "\uff0e\uff0e\uff0fx"),
                ("contextDir", "~/x"),
                ("contextDir", "a\u2028b"),
                ("composeFilePath", "a*b"),
                ("composeFilePath", "\ufeffcompose.yml"),
                ("repository", "http://127.0.0.1/x"),
                ("repository", "file:///etc"),
                ("deploymentId", "../x"),
                ("deploymentId", "a" * 65),
                ("portNumber", "99999"),
                ("portNumber", "3000 "),
                ("createdAt", "yesterday"),
                ("autoDeploy", "true"),
                ("type", "Build"),
                ("type", None),
                ("repository", None),
                ("deploymentId", 12345),
            )
        )
        return Hostile(encode(self.job(**{field: value})), None, (), f"injection-{field}")

    def json_escapes(self) -> Hostile:
        raw = self.rng.choice(
            (
                '"branch":"ma\\u0000in"',
                '"branch":"\\ud800"',
                '"dockerFilePath":"\\u002e\\u002e/x"',
                '"branch":"a\\nb"',
                '"contextDir":"\\u202e"',
            )
        )
        text = encode(self.job()).decode()
        return Hostile(("{" + raw + "," + text[1:]).encode(), None, (), "json-escapes")

    def mutated(self) -> Hostile:
        body = bytearray(encode(self.job()))
        for _ in range(self.rng.randint(1, 6)):
            position = self.rng.randrange(len(body))
            operation = self.rng.choice(("flip", "delete", "insert"))
            if operation == "flip":
                body[position] = self.rng.randrange(256)
            elif operation == "delete":
                del body[position]
            else:
                body.insert(position, self.rng.choice(b'{}[]",:\\\x00\xff'))
        return Hostile(bytes(body), None, (), "mutated")

    # --- headers on a valid body (the body alone would be launched) ----------------------------------

    def hostile_attempt_header(self) -> Hostile:
        secret = self.secret()
        value = self.rng.choice(
            (
                str(2**64),
                2**63 - 1,
                -(2**63),
                0,
                -1,
                "1e3",
                "https://u:" + secret + "@h",
                "x" * self.rng.choice((10, 1000, 30_000)),
                [1, 2],
                {"nested": {"deeper": [1]}},
                True,
                None,
                b"\xff\xfe",
            )
        )
        secrets = (secret,) if isinstance(value, str) and secret in value else ()
        extra: dict[str, Any] = {
            "x-junk": self.rng.choice(("y" * 20_000, [list(range(50))] * 50, {"a": {"b": {"c": 1}}})),
            "x-secret": f"https://u:{self.secret()}@h",
        }
        headers = {"x-attempt": value, **self.rng.choice(({}, extra))}
        # x-secret is not read by the orchestrator, so it cannot leak; only x-attempt's value may be echoed
        return Hostile(encode(self.job()), headers, secrets, "header-x-attempt")


def corpus(seed: int, count: int, validation: ValidationConfig | None = None) -> Iterator[Hostile]:
    """``count`` hostile messages, the same ones for the same seed.

    Each body is checked against the validator the orchestrator runs (``validation``): a body it
    accepts is kept only with headers that make the message poison, so that nothing may be launched.
    """
    validation = validation or ValidationConfig()
    validator = JobValidator(validation)
    rng = random.Random(seed)
    maker = _Maker(rng, validation.max_message_bytes)
    makers: list[Callable[[], Hostile]] = [
        maker.random_bytes,
        maker.not_utf8_with_secret,
        maker.not_an_object,
        maker.deep_nesting,
        maker.oversize,
        maker.max_size_invalid,
        maker.duplicate_keys,
        maker.credential_forms,
        maker.injection,
        maker.json_escapes,
        maker.mutated,
        maker.hostile_attempt_header,
    ]
    made = 0
    while made < count:
        message = rng.choice(makers)()
        if message.headers is None and not isinstance(validator.validate(message.body), Rejection):
            continue  # a mutation that happens to be valid would rightly be launched
        made += 1
        yield message


def publish_hostile(config: Config, messages: list[Hostile], *, confirm: bool) -> None:
    """Publish ``messages`` to the execute queue like a hostile producer, on one channel: persistent,
    and with publisher confirms when ``confirm`` (the fuzz test), as fast as it can when not (the
    benchmark, which counts what reaches the dead-letter queue instead)."""
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        channel = connection.channel()
        if confirm:
            channel.confirm_delivery()
        for message in messages:
            channel.basic_publish(
                config.broker.exchange,
                config.broker.execute_queue,
                message.body,
                pika.BasicProperties(delivery_mode=2, headers=message.headers),
                mandatory=confirm,
            )
    finally:
        connection.close()
