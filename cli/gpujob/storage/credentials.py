"""Which environment variables a store's URI needs, and which of them are missing.

Credentials come only from the environment, as each ecosystem's own tools read them: on the job's side
from ``runtime.secrets`` (and ``runtime.env`` for the non-secret ones), on this machine from the shell.
gpujob never reads ``~/.aws``, ``gcloud`` or ``az login`` state: what the job can use is what the spec names.
"""

from __future__ import annotations

from collections.abc import Mapping

from .uri import StorageURI

# Secret variables (runtime.secrets): never in a manifest, a label, a log or the registry.
SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS",
               "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
               "AZURE_CLIENT_SECRET")
# Non-secret settings (runtime.env): where the store is, not who you are.
SETTING_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_CLIENT_ID", "AZURE_TENANT_ID")

# Each scheme's ways to authenticate, in the order the message suggests them: all names of one way must be set.
WAYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "s3": (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")),
    "gs": (("GOOGLE_APPLICATION_CREDENTIALS",),),
    "az": (("AZURE_STORAGE_CONNECTION_STRING",), ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY"),
           ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_SAS_TOKEN"),
           ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")),
}
WAYS["abfs"] = WAYS["az"]


def missing_credentials(uri: StorageURI, env: Mapping[str, str]) -> list[str]:
    """The variables still to set for ``uri`` ([] when one way is complete): those of the way closest to
    complete (the first way when none is started). An account written in the URI counts as
    AZURE_STORAGE_ACCOUNT_NAME."""
    have = {k for k, v in env.items() if v}
    if uri.account:
        have.add("AZURE_STORAGE_ACCOUNT_NAME")
    best: tuple[int, int, list[str]] | None = None
    for way in WAYS[uri.scheme]:
        missing = [name for name in way if name not in have]
        if not missing:
            return []
        score = (-(len(way) - len(missing)), len(missing), missing)  # most already set, then fewest to set
        if best is None or score[:2] < best[:2]:
            best = score
    return best[2] if best else []


def credential_names(scheme: str) -> list[str]:
    """Every variable any way of ``scheme`` reads (to pass into a job, to redact)."""
    return sorted({name for way in WAYS[scheme] for name in way})


def describe_missing(uri: StorageURI, missing: list[str], where: str = "the environment") -> str:
    """``s3://b/x needs AWS_SECRET_ACCESS_KEY, which is not set in the environment``."""
    names = " and ".join(missing)
    verb = "are" if len(missing) > 1 else "is"
    return f"{uri} needs {names}, which {verb} not set in {where}"
