"""What goes wrong with a bucket, in the words a user sees (each a :class:`~gpujob.errors.GpujobError`).

Exit 2 where the spec or the environment needs fixing (a URI, a bucket that is not there, credentials
missing or refused), exit 1 where the store failed (unreachable, an upload that failed every retry).
"""

from __future__ import annotations

from gpujob.errors import GpujobError, UserError


class StorageUserError(UserError):
    """A URI, a bucket or credentials that the user must fix (exit 2)."""


class BadStorageURI(StorageUserError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}", hint="write s3://BUCKET/prefix, gs://BUCKET/prefix or az://CONTAINER/prefix")


class MissingCredentials(StorageUserError):
    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message, hint=f"export {names[0]}=... and list it under runtime.secrets "
                                       "(or runtime.env for a setting), then submit again")
        self.names = names


class BucketNotFound(StorageUserError):
    def __init__(self, uri: str, bucket: str) -> None:
        super().__init__(f"{uri}: bucket {bucket!r} does not exist (or the endpoint is not the store that has it)",
                         hint="create it, fix the name, or check AWS_ENDPOINT_URL for S3-compatible stores")


class NothingThere(StorageUserError):
    def __init__(self, uri: str, what: str = "no objects") -> None:
        super().__init__(f"{uri}: {what}", hint="check the prefix: list it with your store's tool "
                                              "(aws s3 ls, gcloud storage ls, az storage blob list)")


class AccessDenied(StorageUserError):
    def __init__(self, uri: str, doing: str) -> None:
        super().__init__(f"{uri}: access denied while {doing} (the store answered 403)",
                         hint="check that the credentials in runtime.secrets are right and allowed to read and "
                              "write this bucket")


class StorageFailed(GpujobError):
    """The store failed: unreachable, or an object that could not be written or read after every retry
    (exit 1). The message names the object."""
