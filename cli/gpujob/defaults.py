"""Defaults that several parts of gpujob share, each written once.

The spec models make them field defaults (so the reference docs and the JSON Schema show them);
the backends, the host service and ``gpujob host up`` use the same names. Plain constants with no
imports: the CLI reads them when it starts.
"""

HOST_IDLE_MINUTES = 15
HOST_IDLE = f"{HOST_IDLE_MINUTES}m"                 # runtime.host_idle, `gpujob host up --idle`
HOST_MAX_LIFETIME_HOURS = 12
HOST_MAX_LIFETIME = f"{HOST_MAX_LIFETIME_HOURS}h"   # runtime.host_max_lifetime, `gpujob host up --max-lifetime`
SHM = "8Gi"                                         # resources.shm: /dev/shm for data-loader workers
HF_CACHE = "gpujob-hf-cache"   # the Hugging Face cache: the Docker volume, and runtime.cache_pvc (Kubernetes)
