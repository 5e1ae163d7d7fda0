"""Object storage: datasets read from, and outputs written to, S3, GCS and Azure Blob (and every
S3-compatible store: R2, MinIO, Ceph) by URI.

Why fsspec (with s3fs, gcsfs, adlfs) rather than obstore: the runner already reads remote files through
fsspec (``datasets`` is built on it), so one library covers all three stores with one API (``find`` with
object details, ``put_file``/``get_file`` with byte callbacks) and the job image gains three small pure-Python
packages instead of a compiled one; obstore is faster on many small objects, which checkpoints and
datasets of a few large shards are not. The SDKs are imported on first use (the ``storage`` extra).

The API the rest of gpujob uses (stable; everything else here is internal):

- URIs (:mod:`.uri`, pure strings, what the spec validates with):
  :func:`looks_like_uri` (written ``scheme:/...``), :func:`is_uri` (one of ``s3 gs az abfs``),
  :func:`parse_uri` -> :class:`StorageURI` (``scheme``, ``bucket``, ``key``, ``account``; ``child(*parts)``,
  ``fs_path``, ``name``) or :class:`BadURI` with "did you mean"; :func:`uri_problem` (the message or None).
- Credentials (:mod:`.credentials`), only from the environment: :func:`missing_credentials(uri, env)`
  (the variable names still to set), :func:`check_credentials(uri, env)` (raises :class:`MissingCredentials`,
  exit 2), :data:`SECRET_VARS` / :data:`SETTING_VARS`.
- Transfers (:mod:`.transfer`): ``Store(uri, env=None)`` with ``list(uri) -> [RemoteFile(rel, size, version)]``,
  ``check_bucket()``, ``read_bytes``/``write_bytes``/``delete``/``exists``, ``upload_file``, ``download_file``
  (through ``.part``, size checked), ``upload_dir(local_dir, uri, progress, skip)``,
  ``download_dir(uri, local_dir, progress, files, have)`` (skips files already complete). ``progress(done, total)``
  in bytes. Each transfer is retried, then raises :class:`StorageFailed` (exit 1) naming the object;
  a missing bucket (:class:`BucketNotFound`) or a 403 (:class:`AccessDenied`) raise at once (exit 2).
- Commits (:mod:`.commit`): ``commit_dir(store, local_dir, uri, progress, extra)`` uploads then writes
  :data:`MARKER` last; ``read_manifest(store, uri)`` (None unless complete); ``committed_children(store, uri,
  pattern)`` -> ``[(step, name)]`` of complete checkpoints.
- Cache (:mod:`.cache`): ``stage(store, uri, cache_root, progress) -> (local_dir, downloaded)``, kept by
  object version (ETag / version id / generation), so unchanged objects are never downloaded twice.
"""

from __future__ import annotations

from .cache import cache_dir, stage
from .commit import MARKER, commit_dir, committed_children, committed_files, read_manifest
from .credentials import SECRET_VARS, SETTING_VARS, credential_names, missing_credentials
from .errors import (
    AccessDenied, BadStorageURI, BucketNotFound, MissingCredentials, NothingThere, StorageFailed, StorageUserError,
)
from .fs import check_credentials
from .transfer import Progress, RemoteFile, Store
from .uri import SCHEMES, BadURI, StorageURI, bucket_problem, is_uri, looks_like_uri, parse_uri, uri_problem

__all__ = [
    "MARKER", "SCHEMES", "SECRET_VARS", "SETTING_VARS", "AccessDenied", "BadStorageURI", "BadURI", "BucketNotFound",
    "MissingCredentials", "NothingThere", "Progress", "RemoteFile", "StorageFailed", "StorageURI",
    "StorageUserError", "Store", "bucket_problem", "cache_dir", "check_credentials", "commit_dir",
    "committed_children", "committed_files", "credential_names", "is_uri", "looks_like_uri", "missing_credentials",
    "parse_uri", "read_manifest", "stage", "uri_problem",
]
