"""What a failed Lambda Cloud API call raises: LambdaError, chosen by the API's error ``code``
(never by its wording), with the words a user sees and what to do next."""

from __future__ import annotations

from gpujob.errors import GpujobError, UserError
from gpujob.hosts.lambda_api.key import API_KEY_ENV, API_KEY_FILE, API_KEYS_PAGE

INSUFFICIENT_CAPACITY = "instance-operations/launch/insufficient-capacity"
NOT_FOUND = "global/object-does-not-exist"


# code -> (what it means, in words; what to do, or None to use the API's suggestion)
_CODE_WORDS: dict[str, tuple[str, str | None]] = {
    "global/invalid-api-key": (
        "Lambda Cloud rejected the API key",
        f"create a new key in the Lambda Cloud dashboard under API keys ({API_KEYS_PAGE}), then "
        f"`export {API_KEY_ENV}=...` or put it in ~/.gpujob/{API_KEY_FILE} with `chmod 600`"),
    "global/account-inactive": (
        "your Lambda Cloud account is inactive",
        "verify your email address and add a payment method in the Lambda Cloud dashboard; "
        "contact Lambda support if it continues"),
    "global/invalid-address": (
        "Lambda Cloud says your billing address is invalid",
        "correct the billing address in the Lambda Cloud dashboard"),
    "global/forbidden": ("Lambda Cloud refused the request (forbidden)", None),
    "global/invalid-parameters": ("Lambda Cloud refused the request's parameters", None),
    NOT_FOUND: ("Lambda Cloud has no such object", None),
    "global/not-found": ("Lambda Cloud has no such object", None),
    "global/duplicate": ("that name is already taken on Lambda Cloud", "choose another name"),
    "global/conflict": ("the request conflicts with the object's current state", None),
    "global/quota-exceeded": (
        "your Lambda Cloud quota is used up",
        "terminate instances you no longer need, or ask Lambda support to raise the quota"),
    INSUFFICIENT_CAPACITY: ("Lambda Cloud has no capacity for this launch", None),
    "instance-operations/launch/file-system-in-wrong-region": (
        "the file system is in another region than the instance",
        "launch in the file system's region, or leave the file system out"),
    "filesystems/filesystem-in-use": (
        "the file system is mounted on an instance", "terminate the instances using it first"),
    "global/internal-error": ("Lambda Cloud had an internal error", "try again later"),
}
# Codes that mean "your input (key, names, ids, account) needs fixing": exit 2.
_USER_CODES = {
    "global/invalid-api-key", "global/account-inactive", "global/invalid-address", "global/forbidden",
    "global/invalid-parameters", NOT_FOUND, "global/not-found", "global/duplicate",
    "global/quota-exceeded", "instance-operations/launch/file-system-in-wrong-region",
    "filesystems/filesystem-in-use",
}


class LambdaError(GpujobError):
    """A Lambda Cloud API call failed. ``code`` is the API's error code (or a ``client/...`` code for
    failures that never got an API answer), ``message`` the words a user sees, ``hint`` what to do,
    ``suggestion`` the API's own suggestion, ``status`` the HTTP status (0 when there was none)."""

    def __init__(self, code: str, message: str, *, hint: str | None = None,
                 suggestion: str | None = None, status: int = 0, api_message: str | None = None) -> None:
        super().__init__(message, hint)
        self.code = code
        self.suggestion = suggestion
        self.status = status
        self.api_message = api_message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status}, message={self.message!r})"


class LambdaUserError(LambdaError, UserError):
    """A LambdaError the user fixes (the key, a name, an id, the account): exit 2."""

    exit_code = 2


class CapacityError(LambdaError):
    """No capacity for an instance type in the wanted region; ``regions_with_capacity`` lists where
    there is some (maybe none), ``alternatives`` other types that have capacity now."""

    def __init__(self, instance_type: str, region: str | None, regions_with_capacity: list[str], *,
                 alternatives: list[str] | None = None, status: int = 0,
                 suggestion: str | None = None) -> None:
        self.instance_type = instance_type
        self.region = region
        self.regions_with_capacity = list(regions_with_capacity)
        self.alternatives = list(alternatives or [])
        where = f" in {region}" if region else ""
        if self.regions_with_capacity:
            message = (f"{instance_type} has no capacity{where}; it has capacity in: "
                       f"{', '.join(self.regions_with_capacity)}")
            hint = "launch in one of those regions, or leave the region unset to take the first with capacity"
        else:
            message = (f"{instance_type} has no capacity{where}"
                       f"{', nor in any other region' if region else ' in any region'} right now")
            hint = "try again later"
            if self.alternatives:
                hint += f", or use a type that has capacity now: {', '.join(self.alternatives[:6])}"
        super().__init__(INSUFFICIENT_CAPACITY, message, hint=hint, suggestion=suggestion, status=status)

