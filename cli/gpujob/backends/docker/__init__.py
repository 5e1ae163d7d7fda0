"""The Docker backend: :mod:`.backend` (``DockerBackend``: submit, status, logs, cancel),
:mod:`.container` (what the job's container gets) and :mod:`.engine` (the connection to one engine)."""
