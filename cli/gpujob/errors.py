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


class OutputDirInUse(UserError):
    """Another active job already writes to this ``output.dir`` (checked in the same transaction
    that records the new job, so two submits at once cannot both pass)."""

    def __init__(self, output_dir: str, job_id: str, name: str, status: str) -> None:
        holder = (f"running job {job_id} ({name})" if status == "running"
                  else f"job {job_id} ({name}), which is {status}")
        super().__init__(f"output directory {output_dir} is in use by {holder}",
                         hint=f"wait for it (`gpujob logs -f {job_id}`), cancel it, or set output.dir "
                              "(for a sweep: --set output.dir=outputs/NAME)")
        self.output_dir, self.job_id = output_dir, job_id


class RegistryError(GpujobError):
    """gpujob's home or its registry cannot be used as it is (unreadable, read-only, damaged).
    An environment failure (exit 1): the message names the path, the hint what to do."""
