"""Lambda Cloud public API v1 client. **Stdlib only**: shipped to the rented host inside the idle
agent's zip application and used there to terminate the instance (the host has no pip packages).

| module    | what it does                                                                   |
|-----------|--------------------------------------------------------------------------------|
| client    | LambdaClient: instance types, launch, terminate, instances, SSH keys, file systems |
| transport | one API call: auth, retries with backoff, launch spacing, errors by code       |
| errors    | LambdaError, LambdaUserError, CapacityError, and the words for each code       |
| models    | InstanceType and Instance as the API describes them                            |
| key       | the API key: from $LAMBDA_API_KEY or its 0600 file; never printed              |

What it relies on, from the OpenAPI spec Lambda publishes (https://cloud.lambda.ai/api/v1/openapi.json,
v1.10.0, rendered at https://docs.lambda.ai/api/cloud):

- Base URL ``https://cloud.lambda.ai/api/v1`` (``cloud.lambdalabs.com`` is the deprecated secondary
  server). Override with ``base_url=`` or ``$GPUJOB_LAMBDA_API_URL``.
- Auth: ``Authorization: Bearer <key>`` (Basic with the key as user is also accepted; not used here).
- Success bodies are ``{"data": ...}``; errors ``{"error": {"code", "message", "suggestion"?}}``. The
  spec says to key on ``code``, never on the wording, so the messages in :mod:`.errors` are chosen by code.
- Rate limits: "Requests to the API are generally limited to one request per second. Requests to the
  /instance-operations/launch endpoint are limited to one request per 12 seconds, or five requests per
  minute." 429 is retried with backoff; launches are also spaced client-side.
- Launch body: ``region_name``, ``instance_type_name``, ``ssh_key_names`` (exactly one), optional
  ``file_system_names``, ``name``. ``quantity`` is no longer in the spec (more than 1 is refused).
- Instance statuses: booting, active, unhealthy, terminating, terminated, preempted. ``ip`` is absent
  until the instance has booted.

The API key never appears in a message, a hint, a repr or a log line, and never in a URL.
"""

from gpujob.hosts.lambda_api.client import LambdaClient
from gpujob.hosts.lambda_api.errors import (
    INSUFFICIENT_CAPACITY,
    NOT_FOUND,
    CapacityError,
    LambdaError,
    LambdaUserError,
)
from gpujob.hosts.lambda_api.key import API_KEY_ENV, API_KEY_FILE, API_KEYS_PAGE, api_key
from gpujob.hosts.lambda_api.models import INSTANCE_STATUSES, Instance, InstanceType
from gpujob.hosts.lambda_api.transport import (
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    INITIAL_BACKOFF_S,
    LAUNCH_INTERVAL_S,
    LAUNCH_SPACING_S,
    MAX_ATTEMPTS,
    MAX_BACKOFF_S,
    RETRY_AFTER_CAP_S,
)

__all__ = [
    "API_KEY_ENV", "API_KEY_FILE", "API_KEYS_PAGE", "BASE_URL_ENV", "DEFAULT_BASE_URL", "INITIAL_BACKOFF_S",
    "INSTANCE_STATUSES", "INSUFFICIENT_CAPACITY", "LAUNCH_INTERVAL_S", "LAUNCH_SPACING_S", "MAX_ATTEMPTS",
    "MAX_BACKOFF_S", "NOT_FOUND", "RETRY_AFTER_CAP_S", "CapacityError", "Instance", "InstanceType",
    "LambdaClient", "LambdaError", "LambdaUserError", "api_key",
]
