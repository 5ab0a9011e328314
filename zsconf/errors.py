"""One exception hierarchy for the library; the CLI prints each as one line and exits 1."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Diagnostic",
    "ExecutorError",
    "MissingExtraError",
    "PermanentError",
    "PlanError",
    "StackError",
    "StalePlanError",
    "StateError",
    "StateLockedError",
    "ZsconfError",
]


class ZsconfError(Exception):
    """Base of every error zsconf raises on purpose."""


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a stack: where (file, line, dotted path) and what was expected."""

    message: str
    path: str = ""
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.file or "<stack>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "path": self.path, "message": self.message}


class StackError(ZsconfError):
    """The stack does not load or does not validate; carries every diagnostic found."""

    def __init__(self, diagnostics: list[Diagnostic], partial: object = None) -> None:
        self.diagnostics = diagnostics
        # The stack without its schema-invalid resources (a LoadedStack), when that much loads:
        # callers build its graph to report reference errors in the same run.
        self.partial = partial
        super().__init__("\n".join(str(d) for d in diagnostics))


class PlanError(ZsconfError):
    """A plan cannot be made or applied (prevent_destroy, an 11th model version, ...)."""


class StalePlanError(PlanError):
    """A saved plan no longer matches the state or the stack it was made from."""


class StateError(ZsconfError):
    """The state store cannot be opened or is newer than this code."""


class StateLockedError(StateError):
    """Another process holds the state lock."""


class ExecutorError(ZsconfError):
    """The executor could not start, observe or stop a process."""


class PermanentError(ZsconfError):
    """An action that cannot succeed until the stack's files or the world change (a model folder
    without config.json, weights that fail validation, a job whose runner reported a user error):
    the daemon does not retry it on a timer."""


class MissingExtraError(ZsconfError):
    """An optional extra is needed for this command."""

    def __init__(self, extra: str, what: str) -> None:
        super().__init__(f"{what} needs the [{extra}] extra: pip install 'zsconf[{extra}]'")
