"""Validation of job messages: complete (every problem reported) and secure (nothing unsafe passes).

:class:`JobValidator` turns the raw bytes of a message into a normalised typed job or a
:class:`Rejection` whose reasons each name the field and the rule broken. The Validator actor and the
``orchestrator validate`` command both use it.
"""

from orchestrator.validation.validator import REASON_CLASSES, JobValidator, Rejection

__all__ = ["REASON_CLASSES", "JobValidator", "Rejection"]
