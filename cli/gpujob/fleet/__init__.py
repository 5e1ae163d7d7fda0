"""Rented hosts, as gpujob keeps them in the registry: launch and provision (`host up`), what is
known of them (`host list`), and the host a job runs on. Stopping them is :mod:`gpujob.teardown`.

A host's life: ``launching`` (asking the API) -> ``booting`` (launched: billing from here on) ->
``provisioning`` (set-up over SSH) -> ``ready`` (jobs run here; the idle agent watches it) ->
``terminated``. It is recorded in the registry from the moment the API accepted the launch, so an
interrupted `host up` never leaves a machine nobody knows about.

Who stops a host, from first to last resort:

1. its idle agent (:mod:`gpujob.hosts.agent`, a systemd service on the host) once nothing has
   happened there for ``idle_minutes``, or at the hard deadline (launch + max lifetime);
2. the reaper (:mod:`gpujob.teardown`): the CLI's commands look (one SQLite query) for hosts whose
   check time or hard deadline has passed; for each it reads the agent's heartbeat over SSH, and
   terminates the host when the deadline has passed or the agent has stopped reporting and no job
   runs there (``gpujob host reap`` does the same for every host, at once);
3. ``gpujob host down NAME``.

Modules: :mod:`.access` (the API client, SSH, timings), :mod:`.launch` (up), :mod:`.watch` (sync,
heartbeats, list), :mod:`.jobs` (the host a job runs on, handed to the host backend).
"""
