"""Submit's check of a job's buckets: every URI the spec names has its credentials, and its bucket answers.

The job's environment is what the spec gives it: ``runtime.env`` (settings such as AWS_ENDPOINT_URL) and
``runtime.secrets`` (credentials), the latter read from the submitting shell where the backend passes them
from there. A variable set in the shell but not listed under ``runtime.secrets`` is *not* the job's: the
message says to list it. Nothing is recorded or started before this passes.
"""

from __future__ import annotations

from collections.abc import Mapping

from .credentials import SECRET_VARS, missing_credentials
from .errors import MissingCredentials
from .transfer import Store
from .uri import StorageURI, parse_uri


def job_env(env: Mapping[str, str], secrets: list[str], shell: Mapping[str, str], secrets_here: bool) -> dict[str, str]:
    """The environment the job will have for its stores: runtime.env, plus the listed secrets (their values
    from ``shell`` when ``secrets_here``; else a placeholder: the backend finds them, e.g. a Kubernetes Secret)."""
    got = dict(env)
    for name in secrets:
        value = shell.get(name) if secrets_here else "<from the backend's secret store>"
        if value:
            got[name] = value
    return got


def check_credentials_for_job(uris: list[tuple[str, str]], env: Mapping[str, str], secrets: list[str],
                              shell: Mapping[str, str], secrets_here: bool, spec_file: str | None) -> dict[str, str]:
    """Raise :class:`MissingCredentials` for the first URI whose credentials the job would lack; returns the
    job's environment for its stores."""
    job = job_env(env, secrets, shell, secrets_here)
    where = f" ({spec_file})" if spec_file else ""
    for key, value in uris:
        uri = parse_uri(value)
        missing = missing_credentials(uri, job)
        if not missing:
            continue
        unlisted = [n for n in missing if shell.get(n) and n not in secrets and n in SECRET_VARS]
        if unlisted and len(unlisted) == len(missing):
            message = (f"{key}: {uri} needs {' and '.join(unlisted)}, which {'is' if len(unlisted) == 1 else 'are'} set "
                       f"in your shell but not passed to the job: list {'it' if len(unlisted) == 1 else 'them'} under "
                       f"runtime.secrets{where}")
        elif secrets_here:
            message = (f"{key}: {uri} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                       f"set in your environment{where}")
        else:
            message = (f"{key}: {uri} needs {' and '.join(missing)}: list {'it' if len(missing) == 1 else 'them'} "
                       f"under runtime.secrets{where} (and in the backend's secret store)")
        raise MissingCredentials(message, missing)
    return job


def probe(uris: list[tuple[str, str]], env: Mapping[str, str]) -> None:
    """Ask each bucket once, with the job's credentials: a missing bucket or refused keys raise now (exit 2),
    before anything is recorded; an unreachable store raises :class:`StorageFailed` (exit 1)."""
    seen: set[tuple[str, str, str | None]] = set()
    for _, value in uris:
        uri = parse_uri(value)
        if (uri.scheme, uri.bucket, uri.account) in seen:
            continue
        seen.add((uri.scheme, uri.bucket, uri.account))
        Store(StorageURI(uri.scheme, uri.bucket, "", uri.account), env).check_bucket()
