"""One fsspec filesystem per URI, built from the environment only, and the store's errors in user words.

The SDKs (s3fs, gcsfs, adlfs: the ``storage`` extra) are imported here, lazily, on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .credentials import describe_missing, missing_credentials
from .errors import AccessDenied, BucketNotFound, MissingCredentials, StorageFailed, StorageUserError
from .uri import StorageURI

T = TypeVar("T")
PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60


def check_credentials(uri: StorageURI, env: Mapping[str, str] | None = None, where: str = "the environment") -> None:
    """:class:`MissingCredentials` naming the variables ``uri`` still needs."""
    missing = missing_credentials(uri, os.environ if env is None else env)
    if missing:
        raise MissingCredentials(describe_missing(uri, missing, where), missing)


def make_filesystem(uri: StorageURI, env: Mapping[str, str] | None = None) -> Any:
    """The fsspec filesystem for ``uri``'s store, its credentials and settings read from ``env``
    (default: this process's environment). No listings cache: a job and ``pull`` see the store as it is."""
    env = os.environ if env is None else env
    check_credentials(uri, env)
    try:
        if uri.scheme == "s3":
            import s3fs
            endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
            region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None
            keys = ({"key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"],
                     "token": env.get("AWS_SESSION_TOKEN") or None} if env.get("AWS_ACCESS_KEY_ID") else {})
            return s3fs.S3FileSystem(
                endpoint_url=endpoint, client_kwargs={"region_name": region} if region else {}, **keys,
                config_kwargs={"retries": {"max_attempts": 2, "mode": "standard"},
                               "connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S},
                skip_instance_cache=True, use_listings_cache=False)
        if uri.scheme == "gs":
            import gcsfs
            return gcsfs.GCSFileSystem(token=env["GOOGLE_APPLICATION_CREDENTIALS"], skip_instance_cache=True,
                                       use_listings_cache=False)
        import adlfs
        options = {k: env.get(v) for k, v in (("connection_string", "AZURE_STORAGE_CONNECTION_STRING"),
                                              ("account_key", "AZURE_STORAGE_ACCOUNT_KEY"),
                                              ("sas_token", "AZURE_STORAGE_SAS_TOKEN"),
                                              ("tenant_id", "AZURE_TENANT_ID"), ("client_id", "AZURE_CLIENT_ID"),
                                              ("client_secret", "AZURE_CLIENT_SECRET")) if env.get(v)}
        return adlfs.AzureBlobFileSystem(account_name=uri.account or env.get("AZURE_STORAGE_ACCOUNT_NAME"),
                                         skip_instance_cache=True, **options)
    except ImportError as exc:
        raise StorageUserError(f"{uri}: reading {uri.scheme}:// needs the Python package {PACKAGES[uri.scheme]}, "
                               f"which is not installed ({exc})",
                               hint="pip install 'gpujob[storage]' (the job image has it)") from None


def translate(exc: BaseException, uri: StorageURI, doing: str) -> Exception:
    """The store's exception as a gpujob error naming ``uri`` (the object) and what was being done."""
    text = str(exc)
    if isinstance(exc, StorageUserError | StorageFailed):
        return exc
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "403" in text or "Forbidden" in text \
            or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return AccessDenied(str(uri), doing)
    if isinstance(exc, FileNotFoundError) and ("bucket does not exist" in text or "NoSuchBucket" in text
                                               or "ContainerNotFound" in text):
        return BucketNotFound(str(uri), uri.bucket)
    if isinstance(exc, FileNotFoundError):
        return StorageFailed(f"{uri}: not found while {doing}")
    kind = type(exc).__name__
    return StorageFailed(f"{uri}: {doing} failed: {kind}: {_first_line(text)}",
                         hint="check the network and the endpoint (AWS_ENDPOINT_URL), then run it again")


def is_user_error(exc: BaseException) -> bool:
    """Retrying will not help: a missing bucket, refused credentials, a missing object."""
    translated = exc if isinstance(exc, StorageUserError) else None
    return translated is not None or isinstance(exc, PermissionError | FileNotFoundError | StorageUserError) \
        or any(word in str(exc) for word in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"))


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no message"
    return line[:300]


def call(uri: StorageURI, doing: str, fn: Callable[[], T]) -> T:
    """``fn()`` once, its failure translated."""
    try:
        return fn()
    except Exception as exc:  # the SDKs raise their own types (botocore, aiohttp, azure-core)
        raise translate(exc, uri, doing) from None
