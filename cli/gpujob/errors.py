"""Domain errors. Each one carries the words a user sees and the exit code.

The CLI turns any :class:`GpujobError` into its message (and a hint for what
to run next) and exits with :attr:`exit_code`; no traceback is shown for them.
Exit code 2 means "your input needs fixing", 1 "something failed".
"""

from __future__ import annotations

from typing import Any, Sequence


class GpujobError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UserError(GpujobError):
    """The user's input (a spec, a flag, a job id) needs fixing."""

    exit_code = 2


class JobNotFound(UserError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"no job matches {ref!r}", hint="run `gpujob list` to see job ids and names")


class AmbiguousJob(UserError):
    def __init__(self, ref: str, jobs: Sequence[Any]) -> None:
        listing = "\n".join(f"  {j.id}  {j.name}  {j.status}" for j in jobs)
        super().__init__(f"{ref!r} matches {len(jobs)} jobs:\n{listing}",
                         hint="use the job id (or a longer prefix of it)")


class BackendUnavailable(UserError):
    def __init__(self, backend: str, why: str) -> None:
        super().__init__(f"backend {backend!r}: {why}",
                         hint="run it on the local backend with `--backend local`")


class MissingSecret(UserError):
    def __init__(self, names: Sequence[str], spec_file: str | None) -> None:
        where = f" (listed in {spec_file} under runtime.secrets)" if spec_file else ""
        joined = ", ".join(names)
        super().__init__(f"secret {joined} is not set in your environment{where}",
                         hint=f"export {names[0]}=... in your shell, then submit again")


class JobStateError(UserError):
    """An operation that does not fit the job's state (cancel a finished job...)."""
