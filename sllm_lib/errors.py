"""Error tree for sllm. User mistakes raise these; `launch/cli.py` maps them to exit code 2."""

from __future__ import annotations


class SllmError(Exception):
    """Base of every error sllm raises for a user-facing problem."""

    def __reduce__(self):  # picklable across process boundaries with its message
        return (self.__class__, (str(self),))


class JobSpecError(SllmError):
    """A job spec or cluster profile failed validation (all problems listed)."""


class DataError(SllmError):
    """A data file or record is unreadable or invalid (names file:line)."""


class PlanError(SllmError):
    """The stage graph cannot be planned (cycle, unknown stage, missing input)."""


class SubmissionError(SllmError):
    """An executor could not submit or run a stage."""


class StageFailedError(SllmError):
    """A stage ran and failed."""


class ArtifactNotFoundError(SllmError):
    """A model, run or artifact that was asked for does not exist."""
