"""The Kubernetes backend: :mod:`.backend` (``KubernetesBackend``: submit, status, logs, cancel),
:mod:`.manifests` (the Job and its objects), :mod:`.cluster` (the API client) and :mod:`.explain`
(a job's state in words)."""
