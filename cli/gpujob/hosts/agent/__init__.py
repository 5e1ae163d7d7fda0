"""The idle agent: runs on a rented GPU host and terminates that host once nothing uses it.

Shipped by the provisioner as one zip application, ``/opt/gpujob/agent.pyz`` (this package with
the few stdlib-only modules it imports: :mod:`gpujob.hosts.lambda_api`, :mod:`gpujob.hosts.layout`,
:mod:`gpujob.wire`, :mod:`gpujob.events`; see :func:`gpujob.hosts.provision.agent_zipapp`), and
run by systemd as ``/usr/bin/python3 /opt/gpujob/agent.pyz --config /etc/gpujob/agent.json``.
Standard library only (``pynvml`` from nvidia-ml-py is used when importable).
``python -m gpujob.hosts.agent --config FILE --once`` runs one check and prints it.

| module    | what it does                                                                    |
|-----------|---------------------------------------------------------------------------------|
| config    | agent.json: AgentConfig and its checks                                          |
| dockerapi | the few Docker Engine API calls the agent makes, over the unix socket           |
| probes    | what the agent looks at: containers and their last event, GPUs, SSH, uploads    |
| decide    | the rules of one check, as pure functions, and the Decision it records          |
| check     | Agent: one check a tick, the idle timer, hung jobs, terminating, the heartbeat  |
| gpuqueue  | the host's GPU queue: starts queued GPU jobs on their own GPUs, between checks  |
| main      | the service: terminate through the Lambda API, logging, argv                    |

Every ``check_interval_s`` (60 s) the agent looks at the host. Each of these counts as activity
and resets the idle timer:

* a running gpujob container (label ``gpujob.dev/managed-by=gpujob``) that is not hung:
  "job abc123 running";
* a GPU job waiting in the host's GPU queue (a created container with ``gpujob.dev/gpus``): "job
  abc123 queued for 1 GPU";
* a gpujob container that is not running but still exists (exited, dead, created, paused): the
  client removes a container only after it has saved its log and outputs, so one that still
  exists has results waiting to be collected: "job abc123 ended; its log and outputs not
  collected yet" (bounded by ``hard_deadline``);
* any GPU whose utilisation is at or above ``gpu_busy_percent``: "GPU 0 at 87%";
* an interactive SSH session, when ``ssh_keeps_alive``: "1 SSH session". Interactive means the
  session has a terminal: its sshd process is titled ``sshd: USER@pts/N`` (``sshd-session:`` on
  OpenSSH 9.8+), found by scanning ``/proc/*/cmdline``. Sessions without a terminal
  (``sshd: USER@notty``: ``ssh host CMD``, scp, sftp, and gpujob's own commands, which never ask
  for one) do not count;
* a file in ``uploads_dir`` (an output upload in flight writes one, named after its job):
  "upload pending for job abc123".

What does not count: CPU load, network traffic, GPU memory in use while utilisation is below the
threshold, containers without the gpujob label, SSH sessions without a terminal, the agent
itself, a hung job (below), and a container the agent stopped as hung (its container is left for
the client to collect, but it does not keep the host up).

A probe that fails (Docker down, NVML broken, /proc unreadable) is *no evidence of activity*: a
broken Docker engine cannot keep a host billing forever. The probes are independent, so GPU
utilisation still protects a running job while Docker does not answer. Nothing that goes wrong in
a probe or a step stops the agent: the exception is logged and listed in the heartbeat.

Decisions, in this order, each tick:

1. Hung jobs. A running container that has reported at least one progress-protocol event
   (``@gpujob/v1 {...}`` in its log, any event) and whose last event is older than its
   ``gpujob.dev/idle-minutes`` label (``hung_minutes_default`` for containers without the
   label; never, when neither is set) is stopped (SIGTERM, SIGKILL after ``stop_grace_s``) and
   ``hung/<job id>.json`` is written for the client. The last event's time is the engine's
   timestamp of that log line (the last ``LOG_TAIL_LINES`` lines are read each tick; the newest
   event seen is remembered across ticks). Events from before the container's latest start do
   not count.
2. Hard deadline. At or past ``hard_deadline`` (launch time + the maximum lifetime) the host is
   terminated whatever is going on, after stopping the running gpujob containers with
   ``stop_grace_s`` of grace so jobs can save a checkpoint.
3. Idle. Once no activity has been seen for ``idle_minutes`` the host terminates itself. The
   idle timer counts from the last check that saw activity, so the host goes at the first check
   at least ``idle_minutes`` after that: never before, at most one check interval late.

Between checks, every ``queue_interval_s`` (1 s), the agent steps the host's GPU queue
(:mod:`.gpuqueue`): it starts a queued GPU job once its own GPUs are free; never past the hard deadline.

Terminating calls the cloud API for this instance. A failure is retried at every following
check (the heartbeat shows ``terminate_error``) until the API answers that the instance is
terminating or terminated. A terminate for idleness that has not gone through yet is called off
when activity comes back; one for the hard deadline never is. If the host is still up
``TERMINATE_REISSUE_S`` after the API said it was terminating, the agent asks again.

Restarts: the heartbeat file keeps the idle timer. On start the agent reads it back and resumes
the timer where the last heartbeat left it (``idle_for_s``): time while the agent was not running
(a reboot, a crash, a service restart) counts neither as idle nor as activity, so a restart
neither resets the timer to "just now" nor terminates at once. A restart counts as activity
(the timer starts at zero) only when there is no readable heartbeat for this instance, i.e. on
the host's first start.

After every check the agent writes ``heartbeat.json`` atomically (0644): the client reads it over
SSH to know the agent is alive and what it sees. It logs to ``agent.log`` in the state
directory (size-capped, rotated) and to stdout (journald). The Lambda API key is read from its
0600 file only when terminating; it never appears in a command line, a child's environment, the
heartbeat or the log.
"""
