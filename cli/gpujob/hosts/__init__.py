"""Rented GPU hosts (Lambda-style): provision one, run jobs on it, terminate it once it is idle.

| module        | what it does                                                               | runs where  |
|---------------|----------------------------------------------------------------------------|-------------|
| lambda_api    | Lambda Cloud public API v1 client (stdlib only, shared with the agent)       | both sides  |
| layout        | where gpujob's files live on a host                                          | both sides  |
| ssh           | SSH to a host (paramiko): pinned host keys, commands, files, docker tunnel   | this machine|
| provision     | idempotent set-up over SSH: driver, Docker, NVIDIA toolkit, image, agent     | this machine|
| agent         | the idle agent (stdlib only, shipped as agent.pyz): terminates its instance  | the host    |

Hosts as the registry keeps them (host up, list, the host a job runs on) are :mod:`gpujob.fleet`,
and host down and the reaper :mod:`gpujob.teardown`: they use the registry and the job service,
which this package never imports.
"""
