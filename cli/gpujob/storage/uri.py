"""Object-store URIs: which values of a spec name a bucket, and whether they are written right.

Pure string work (no SDK is imported): the spec validates with it, the runner and the CLI parse with it.
Accepted: ``s3://bucket/prefix`` (AWS S3 and every S3-compatible store: R2, MinIO, Ceph through
``AWS_ENDPOINT_URL``), ``gs://bucket/prefix`` (Google Cloud Storage), ``az://container/prefix`` and
``abfs://container/prefix`` or ``abfs://container@account.dfs.core.windows.net/prefix`` (Azure Blob / ADLS Gen2).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

SCHEMES = ("s3", "gs", "az", "abfs")
# Schemes people write for the same stores, and the one gpujob reads them with.
NEAR_MISSES = {"s3a": "s3", "s3n": "s3", "s3s": "s3", "gcs": "gs", "gc": "gs", "google": "gs", "azure": "az",
               "abfss": "abfs", "wasb": "az", "wasbs": "az", "adl": "az", "blob": "az", "minio": "s3", "r2": "s3"}
_SCHEME_LIKE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/+")
_AZ_HOST = re.compile(r"^([^@/]+)@([a-z0-9]{3,24})\.(?:dfs|blob)\.core\.windows\.net$")
SHOWN = "s3://, gs://, az:// or abfs://"


class BadURI(ValueError):
    """A value written as a URI that gpujob cannot read: the message says why and what to write."""


@dataclass(frozen=True)
class StorageURI:
    """``scheme://bucket/key``: ``bucket`` is the S3/GCS bucket or the Azure container; ``key`` the
    object prefix without leading or trailing ``/`` (may be empty); ``account`` the Azure storage account
    when the URI names it (``abfs://container@account.dfs.core.windows.net/...``)."""

    scheme: str
    bucket: str
    key: str = ""
    account: str | None = None

    def __str__(self) -> str:
        host = f"{self.bucket}@{self.account}.dfs.core.windows.net" if self.account else self.bucket
        return f"{self.scheme}://{host}/{self.key}" if self.key else f"{self.scheme}://{host}"

    @property
    def fs_path(self) -> str:
        """The path fsspec's filesystems take: ``bucket/key``, no scheme."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def child(self, *parts: str) -> "StorageURI":
        """This URI with ``parts`` joined under its key."""
        extra = "/".join(p.strip("/") for p in parts if p.strip("/"))
        key = f"{self.key}/{extra}" if self.key and extra else self.key or extra
        return StorageURI(self.scheme, self.bucket, key, self.account)

    @property
    def name(self) -> str:
        """The last part of the key (or the bucket), as a dataset's default name."""
        return (self.key.rsplit("/", 1)[-1] if self.key else self.bucket) or self.bucket


def looks_like_uri(value: str) -> bool:
    """Written as ``scheme:/...`` with a scheme of two letters or more (``C:/`` is a Windows drive)."""
    return _SCHEME_LIKE.match(value.strip()) is not None


def is_uri(value: str) -> bool:
    """A URI of a store gpujob reads and writes (well formed or not: see :func:`uri_problem`)."""
    match = _SCHEME_LIKE.match(value.strip())
    return match is not None and match.group(1) in SCHEMES and value.strip().startswith(f"{match.group(1)}://")


def uri_problem(value: str) -> str | None:
    """Why ``value`` (written like a URI) cannot be used, with "did you mean"; None when it can."""
    try:
        parse_uri(value)
    except BadURI as exc:
        return str(exc)
    return None


def parse_uri(value: str) -> StorageURI:
    """``value`` as a :class:`StorageURI`, or :class:`BadURI` saying what to write instead."""
    text = value.strip()
    match = _SCHEME_LIKE.match(text)
    if match is None:
        raise BadURI(f'"{_short(text)}" is not a storage URI; write {SHOWN} followed by the bucket, e.g. s3://my-bucket/data')
    scheme = match.group(1)
    rest = text[match.end():]
    proper = scheme.lower() if scheme.lower() in SCHEMES else NEAR_MISSES.get(scheme.lower())
    if proper is None:
        raise BadURI(f'"{_short(text)}": unknown storage scheme {scheme}://; gpujob reads {SHOWN} '
                     "(S3-compatible stores such as R2 or MinIO use s3:// with AWS_ENDPOINT_URL)")
    if not rest.partition("/")[0]:
        raise BadURI(f'"{_short(text)}": the {"container" if proper in ("az", "abfs") else "bucket"} name is missing; '
                     f"write {proper}://NAME/prefix")
    if proper != scheme or not text[len(scheme):].startswith("://") or text[len(scheme) + 3:].startswith("/"):
        raise BadURI(f'"{_short(text)}" is not a storage URI gpujob reads; did you mean "{proper}://{rest}"?')
    host, _, key = rest.partition("/")
    account = None
    if proper in ("az", "abfs") and "@" in host:
        az = _AZ_HOST.match(host)
        if az is None:
            raise BadURI(f'"{_short(text)}": write the Azure account as container@ACCOUNT.dfs.core.windows.net '
                         "(or leave it out and set AZURE_STORAGE_ACCOUNT_NAME)")
        host, account = az.group(1), az.group(2)
    problem = bucket_problem(proper, host)
    if problem:
        raise BadURI(f'"{_short(text)}": {problem}')
    key = key.strip("/")
    if "//" in key:
        raise BadURI(f'"{_short(text)}": the path has an empty part (//); did you mean "{proper}://{host}/{re.sub("/+", "/", key)}"?')
    if any(part in (".", "..") for part in key.split("/")):
        raise BadURI(f'"{_short(text)}": "." and ".." are not object names; write the full prefix')
    return StorageURI(proper, host, key, account)


def bucket_problem(scheme: str, bucket: str) -> str | None:
    """What is wrong with ``bucket`` under the store's naming rules, or None."""
    word = "container" if scheme in ("az", "abfs") else "bucket"
    if not bucket:
        return f"the {word} name is missing; write {scheme}://{word.upper()}/prefix"
    longest = 222 if scheme == "gs" and "." in bucket else 63
    if not 3 <= len(bucket) <= longest:
        return f"{word} name {bucket!r} must be 3 to {longest} characters long"
    if bucket != bucket.lower():
        return f"{word} names are lower case; did you mean {bucket.lower()!r}?"
    allowed = {"s3": r"[a-z0-9.-]", "gs": r"[a-z0-9._-]"}.get(scheme, r"[a-z0-9-]")
    bad = sorted({c for c in bucket if not re.fullmatch(allowed, c)})
    if bad:
        return f"{word} name {bucket!r} has characters a {word} name cannot have: {' '.join(bad)}"
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        return f"{word} name {bucket!r} must begin and end with a letter or digit"
    if scheme in ("az", "abfs") and "--" in bucket:
        return f"container name {bucket!r} cannot have two hyphens in a row"
    if ".." in bucket:
        return f"bucket name {bucket!r} cannot have two dots in a row"
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        return None
    return f"bucket name {bucket!r} cannot be an IP address"


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."
