"""The job validator: raw bytes in, a normalised typed job or a :class:`Rejection` out, never a raise.

Two paths share the field rules of :mod:`orchestrator.validation.rules`:

- the fast path decodes with the prebuilt typed decoder (:data:`orchestrator.messages.JOB_DECODER`),
  which already enforces the JSON types, and runs the semantic rules on the struct (a plain decode
  as well, when the duplicate-key check needs the number of distinct keys, also checks the unknown
  fields the typed decoder skips unread);
- the slow path, taken when the typed decode fails (or unknown fields must be refused), decodes to
  plain JSON values and checks every field, so that every problem of the message is reported.

Both paths refuse a message that repeats a key in any of its objects (see
:mod:`orchestrator.validation.duplicates`), and both read an empty string in an optional field of the
seed's format as the field being absent (the producer sends ``"composeFilePath": ""`` when there is
no compose file). Unknown fields are dropped (tolerant reader) or refused; either way they never
reach a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final, NamedTuple, Union, get_args

import msgspec

from orchestrator.config import ValidationConfig
from orchestrator.errors import ValidationError
from orchestrator.logs import FAILURE, emoji
from orchestrator.messages import ANY_JSON_DECODER, JOB_DECODER, JOB_TYPES, JobBase
from orchestrator.validation import duplicates, rules
from orchestrator.validation.duplicates import DuplicateKey
from orchestrator.validation.repository import RepositoryRule
from orchestrator.validation.rules import SECURITY, Issue, Rule, kind_of, show

log = logging.getLogger(__name__)

# --- rejection classes: a low-cardinality metric label -----------------------------------------

TOO_LARGE: Final = "too_large"
NOT_UTF8: Final = "not_utf8"
NOT_JSON: Final = "not_json"
NOT_OBJECT: Final = "not_object"
UNKNOWN_TYPE: Final = "unknown_type"
SCHEMA: Final = rules.SCHEMA
#: ``SECURITY`` is the class of a rejection with at least one security problem.
REASON_CLASSES: Final = (TOO_LARGE, NOT_UTF8, NOT_JSON, NOT_OBJECT, UNKNOWN_TYPE, SCHEMA, SECURITY)

#: The reason given when validation itself failed (a bug): the message is rejected, never passed on.
INTERNAL_ERROR_REASON: Final = "message: could not be validated (internal error)"
#: How many unknown fields a rejection names one by one before summing up the rest.
MAX_UNKNOWN_FIELDS_LISTED: Final = 10
#: How many repeated keys a rejection names one by one before summing up the rest.
MAX_DUPLICATE_KEYS_LISTED: Final = 10
#: The optional fields of the seed's format in which an empty string means "absent": the field takes
#: its default. The producer sends ``""`` for a value it does not have (``composeFilePath`` when there
#: is no compose file). ``autoDeploy`` is not one: it is a JSON boolean, and ``""`` is not a boolean.
EMPTY_MEANS_ABSENT: Final = frozenset(
    {"branch", "dockerFilePath", "composeFilePath", "contextDir", "createdAt", "portNumber"}
)
_TAG_FIELD: Final = "type"
_SHOWABLE_KEY_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
_MAX_SHOWABLE_KEY: Final = 64


class Rejection(msgspec.Struct, frozen=True):
    """Why a message was refused.

    Attributes:
        reasons: one line per problem, each starting with the field name (``message:`` for the
            message as a whole).
        reason_class: low-cardinality label for metrics, one of :data:`REASON_CLASSES`.
        deployment_id: the message's deploymentId, when one could be read and is itself valid.
        job_type: the message's type, when it is a registered one.
    """

    reasons: tuple[str, ...]
    reason_class: str
    deployment_id: str | None = None
    job_type: str | None = None

    @property
    def reason(self) -> str:
        """All reasons on one line, e.g. for a status event or a dead-letter header."""
        return "; ".join(self.reasons)

    def as_error(self) -> ValidationError:
        """This rejection as the error tree's :class:`~orchestrator.errors.ValidationError`."""
        return ValidationError(list(self.reasons))


class _Field(NamedTuple):
    """How one field of one job type is read and checked (built once per validator).

    A named tuple because the hot loops unpack it.
    """

    attr: str
    wire: str
    required: bool
    nullable: bool
    rule: Rule
    #: Whether the rule adds anything once the typed decoder accepted the value.
    check_typed: bool = True
    #: Whether ``""`` means the field is absent (see :data:`EMPTY_MEANS_ABSENT`).
    empty_means_absent: bool = False
    #: The value of an absent field (unused for a required one).
    default: Any = None


class _TypeRule:
    """The rule of a field no named rule knows (a new job type's own field): its declared type."""

    def __init__(self, annotation: Any) -> None:
        self._annotation = annotation
        self._expected = _describe_type(annotation)

    def __call__(self, field: str, value: Any, issues: list[Issue]) -> Any:
        try:
            return msgspec.convert(value, self._annotation, strict=True)
        except msgspec.ValidationError:
            issues.append(rules.expected(field, self._expected, value))
            return value


class JobValidator:
    """Turns raw job messages into typed, normalised jobs, or rejections naming every problem.

    Holds no state once built, so one instance may serve any number of threads.

    Args:
        rules: the ``[validation]`` section of the config.
        job_types: the job classes to accept; the registered :data:`~orchestrator.messages.JOB_TYPES`
            unless a test or an extension says otherwise.
    """

    def __init__(self, rules: ValidationConfig, *, job_types: Sequence[type[JobBase]] | None = None) -> None:
        self._max_bytes = rules.max_message_bytes
        self._forbid_unknown = rules.forbid_unknown_fields
        repository = RepositoryRule(rules.allowed_hosts, rules.allow_file_repos)
        named: dict[str, Rule] = _named_rules(repository)
        if job_types is None or tuple(job_types) == JOB_TYPES:
            types: tuple[type[JobBase], ...] = JOB_TYPES
            self._decoder: msgspec.json.Decoder[Any] = JOB_DECODER
        else:
            types = tuple(job_types)
            self._decoder = msgspec.json.Decoder(Union[types])  # noqa: UP007
        self._types = {str(cls.__struct_config__.tag): cls for cls in types}
        self._known_text = ", ".join(self._types)
        self._fields = {cls: _fields_of(cls, named) for cls in types}
        self._typed_checks = {
            cls: tuple(f for f in fields if f.check_typed) for cls, fields in self._fields.items()
        }
        self._wire_names = {cls: frozenset(f.wire for f in fields) for cls, fields in self._fields.items()}
        # Keys every accepted message of a type has (its tag and required fields): when a message can
        # hold no more keys than that, none of them can repeat.
        self._least_keys = {cls: 1 + sum(f.required for f in fields) for cls, fields in self._fields.items()}

    def validate(self, raw: bytes) -> JobBase | Rejection:
        """Validate one raw message. Never raises, whatever the bytes.

        Returns:
            The normalised job (portNumber an int, paths normalised, unknown fields dropped), or a
            :class:`Rejection` with one reason per problem.
        """
        try:
            if not isinstance(raw, bytes):
                raw = bytes(raw)
            if len(raw) > self._max_bytes:
                reason = f"message: {len(raw)} bytes exceeds the limit of {self._max_bytes}"
                return Rejection((reason,), TOO_LARGE)
            if self._forbid_unknown:
                return self._validate_plain(raw)
            try:
                job = self._decoder.decode(raw)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                return self._validate_plain(raw)
            return self._check_typed(job, raw)
        except Exception:
            # A bug here must cost one message, not the validator: reject it and say so loudly.
            log.exception("validator failed on a message; rejecting it", extra=emoji(FAILURE))
            return Rejection((INTERNAL_ERROR_REASON,), SCHEMA)

    # --- fast path: the typed decoder accepted the message ---------------------------------------

    def _check_typed(self, job: JobBase, raw: bytes) -> JobBase | Rejection:
        repeated = self._typed_duplicates(job, raw)
        if repeated is None:
            # The typed decoder skips unknown fields without checking them (their UTF-8, for one):
            # the plain path decodes everything and says what is wrong.
            return self._validate_plain(raw)
        if repeated:
            return _duplicates_rejection(repeated, job.deployment_id, job.type)
        issues: list[Issue] = []
        changes: dict[str, Any] = {}
        for attr, wire, _, nullable, rule, _, empty_means_absent, default in self._typed_checks[type(job)]:
            value = getattr(job, attr)
            if value is None and nullable:
                continue
            if empty_means_absent and value == "":
                changes[attr] = default
                continue
            normalised = rule(wire, value, issues)
            if normalised != value:
                changes[attr] = normalised
        if issues:
            deployment_id = job.deployment_id if rules.is_deployment_id(job.deployment_id) else None
            return _reject(issues, deployment_id, job.type)
        return msgspec.structs.replace(job, **changes) if changes else job

    def _typed_duplicates(self, job: JobBase, raw: bytes) -> list[DuplicateKey] | None:
        """The repeated keys of a message the typed decoder accepted; ``None`` when it is not valid JSON."""
        bound = duplicates.key_bound(raw)
        if bound is not None and bound <= self._least_keys[type(job)]:
            return []
        try:
            message = ANY_JSON_DECODER.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None
        if bound is not None and bound <= len(message):
            return []
        return duplicates.duplicate_keys(raw)

    # --- slow path: plain JSON values, every field checked --------------------------------------

    def _validate_plain(self, raw: bytes) -> JobBase | Rejection:
        try:
            message = ANY_JSON_DECODER.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
            return _undecodable(raw, e)
        if not isinstance(message, dict):
            return Rejection((f"message: expected a JSON object, got {kind_of(message)}",), NOT_OBJECT)

        raw_id = message.get("deploymentId")
        tag = message.get(_TAG_FIELD)
        cls = self._types.get(tag) if isinstance(tag, str) else None
        bound = duplicates.key_bound(raw)
        if bound is None or bound > len(message):
            repeated = duplicates.duplicate_keys(raw)
            if repeated:
                return _duplicates_rejection(repeated, raw_id, tag if cls is not None else None)
        deployment_id = raw_id if rules.is_deployment_id(raw_id) else None
        if cls is None:
            issues = [self._type_issue(tag, _TAG_FIELD in message)]
            if "deploymentId" not in message:
                issues.append(Issue("deploymentId: is required"))
            else:
                rules.check_deployment_id("deploymentId", raw_id, issues)
            return Rejection(tuple(i.reason for i in issues), UNKNOWN_TYPE, deployment_id)

        issues = []
        values: dict[str, Any] = {}
        for attr, wire, required, nullable, rule, _, empty_means_absent, _ in self._fields[cls]:
            if wire not in message:
                if required:
                    issues.append(Issue(f"{wire}: is required"))
                continue
            value = message[wire]
            if value is None and nullable:
                values[attr] = None
                continue
            if empty_means_absent and value == "":
                continue
            values[attr] = rule(wire, value, issues)
        if self._forbid_unknown:
            issues.extend(self._unknown_field_issues(message, cls))
        if issues:
            return _reject(issues, deployment_id, str(tag))
        return cls(**values)

    def _type_issue(self, tag: object, present: bool) -> Issue:
        if not present:
            return Issue(f"type: is required (one of {self._known_text})")
        if not isinstance(tag, str):
            return rules.expected("type", "a string", tag)
        return Issue(f"type: {show(tag)} is not a known job type (known: {self._known_text})")

    def _unknown_field_issues(self, message: dict[str, Any], cls: type[JobBase]) -> list[Issue]:
        known = self._wire_names[cls]
        unknown = [key for key in message if key != _TAG_FIELD and key not in known]
        tag = cls.__struct_config__.tag
        issues = [
            Issue(f"{_show_key(key)}: unknown field for a {tag} job (validation.forbid_unknown_fields is on)")
            for key in unknown[:MAX_UNKNOWN_FIELDS_LISTED]
        ]
        if len(unknown) > MAX_UNKNOWN_FIELDS_LISTED:
            more = len(unknown) - MAX_UNKNOWN_FIELDS_LISTED
            issues.append(Issue(f"message: {more} more unknown fields"))
        return issues


# --- building the field tables -----------------------------------------------------------------


def _named_rules(repository: RepositoryRule) -> dict[str, Rule]:
    """The rule of each seed field, by wire name; a job type's other fields get a :class:`_TypeRule`."""
    return {
        "deploymentId": rules.check_deployment_id,
        "repository": repository,
        "branch": rules.check_branch,
        "dockerFilePath": rules.check_relative_path,
        "composeFilePath": rules.check_relative_path,
        "contextDir": rules.check_relative_path,
        "createdAt": rules.check_timestamp,
        "portNumber": rules.check_port,
        "autoDeploy": rules.check_boolean,
    }


def _fields_of(cls: type[JobBase], named: dict[str, Rule]) -> tuple[_Field, ...]:
    fields = []
    for info in msgspec.structs.fields(cls):
        rule = named.get(info.encode_name)
        empty_means_absent = not info.required and info.encode_name in EMPTY_MEANS_ABSENT
        # Only a seed field (checked on both paths) may read "" as absent, or the paths would differ.
        assert not empty_means_absent or rule is not None, info.encode_name
        fields.append(
            _Field(
                attr=info.name,
                wire=info.encode_name,
                required=info.required,
                nullable=type(None) in get_args(info.type),
                rule=rule if rule is not None else _TypeRule(info.type),
                check_typed=rule is not None,
                empty_means_absent=empty_means_absent,
                default=None if info.required else info.default,
            )
        )
    return tuple(fields)


def _describe_type(annotation: Any) -> str:
    args = get_args(annotation)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = _describe_type(rest[0]) if len(rest) == 1 else "a value"
        return f"{inner} or null"
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    if annotation in names:
        return names[annotation]
    origin = getattr(annotation, "__origin__", annotation)
    if origin in (list, tuple, set, frozenset):
        return "an array"
    if origin is dict:
        return "an object"
    return f"a {getattr(annotation, '__name__', str(annotation))}"


# --- reasons -----------------------------------------------------------------------------------


def _reject(issues: list[Issue], deployment_id: str | None, job_type: str) -> Rejection:
    reason_class = SECURITY if any(i.kind == SECURITY for i in issues) else SCHEMA
    return Rejection(tuple(i.reason for i in issues), reason_class, deployment_id, job_type)


def _duplicates_rejection(repeated: list[DuplicateKey], raw_id: object, tag: str | None) -> Rejection:
    """The rejection of a message that repeats keys; its deploymentId and type only when not repeated.

    ``tag`` is the message's type when it is a registered one.
    """
    top_level = {duplicate.key for duplicate in repeated if not duplicate.nested}
    reasons = [
        f"message: duplicate key {show(duplicate.key)}{' in a nested object' if duplicate.nested else ''}"
        for duplicate in repeated[:MAX_DUPLICATE_KEYS_LISTED]
    ]
    if len(repeated) > MAX_DUPLICATE_KEYS_LISTED:
        reasons.append(f"message: {len(repeated) - MAX_DUPLICATE_KEYS_LISTED} more duplicate keys")
    deployment_id = None
    if "deploymentId" not in top_level and isinstance(raw_id, str) and rules.is_deployment_id(raw_id):
        deployment_id = raw_id
    job_type = tag if _TAG_FIELD not in top_level else None
    return Rejection(tuple(reasons), SECURITY, deployment_id, job_type)


def _undecodable(raw: bytes, error: Exception) -> Rejection:
    """The rejection of a message that is not UTF-8 or not JSON (the decoder does not always say which)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection((f"message: is not valid UTF-8 (bad byte at offset {e.start})",), NOT_UTF8)
    if not raw.strip():
        reason = "message: is empty"
    elif isinstance(error, RecursionError):
        reason = "message: is not valid JSON (nested too deeply)"
    else:
        detail = str(error).removeprefix("JSON is malformed: ")
        reason = f"message: is not valid JSON ({detail})"
    return Rejection((reason,), NOT_JSON)


def _show_key(key: str) -> str:
    """A field name fit to start a reason: as is when plain, quoted and escaped otherwise."""
    if 0 < len(key) <= _MAX_SHOWABLE_KEY and _SHOWABLE_KEY_CHARS.issuperset(key):
        return key
    return show(key)
