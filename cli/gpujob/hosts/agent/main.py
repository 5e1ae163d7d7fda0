"""The agent as the service runs it: the config, the real probes, a terminate through the Lambda
API with the key from its 0600 file, logging to agent.log and journald, and the command line."""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import signal
import sys
import time
from typing import Any, Callable

from gpujob.hosts.agent.check import Agent
from gpujob.hosts.agent.config import ConfigError, load_config
from gpujob.hosts.agent.gpuqueue import HostGpuQueue, nvidia_smi_uuids
from gpujob.hosts.agent.probes import HostProbes, Probes
from gpujob.hosts.layout import HostLayout

TERMINAL_STATUSES = ("terminating", "terminated", "preempted")   # the instance is going or gone
AGENT_LOG_MAX_BYTES = 1 << 20
AGENT_LOG_BACKUPS = 3

logger = logging.getLogger("gpujob.agent")


def read_api_key(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            key = fh.read().strip()
    except OSError as e:
        raise RuntimeError(f"cannot read the API key file {path}: {e.strerror or e}") from None
    if not key:
        raise RuntimeError(f"the API key file {path} is empty")
    return key


def lambda_terminator(instance_id: str, api_key_path: str, base_url: str | None = None, *,
                      client_factory: Callable[[str, str | None], Any] | None = None) -> Callable[[], None]:
    """terminate() for Agent: asks the Lambda API to terminate ``instance_id`` and returns once the
    API reports it terminating or terminated, else raises. The key is read from its file at each
    call (so a key put in place later is used) and scrubbed from any error message."""

    def default_factory(key: str, url: str | None) -> Any:
        from gpujob.hosts.lambda_api import LambdaClient   # only when terminating

        return LambdaClient(key, url)

    factory = client_factory or default_factory

    def terminate() -> None:
        key = read_api_key(api_key_path)
        try:
            client = factory(key, base_url)
            try:
                answered = client.terminate([instance_id])
            except Exception as e:  # a repeated terminate may be refused: see what the instance is doing
                try:
                    status = client.instance(instance_id).status
                except Exception:
                    raise e from None
                if status in TERMINAL_STATUSES:
                    return
                raise
            statuses = [getattr(i, "status", None) for i in answered or []
                        if getattr(i, "id", instance_id) == instance_id]
            if any(s in TERMINAL_STATUSES for s in statuses):
                return
            status = client.instance(instance_id).status
            if status not in TERMINAL_STATUSES:
                raise RuntimeError(f"the API accepted the terminate but reports the instance {status}")
        except Exception as e:
            text = str(e)
            if key in text:
                raise RuntimeError(f"{type(e).__name__}: {text.replace(key, '***')}") from None
            raise

    return terminate


_handlers: list[logging.Handler] = []


def setup_logging(host_layout: HostLayout, stream: Any = None) -> None:
    """agent.log in the state directory (rotated at 1 MiB, 3 kept) and stdout (journald)."""
    close_logging()
    console = logging.StreamHandler(stream or sys.stdout)
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    _handlers.append(console)
    try:
        os.makedirs(host_layout.state_dir, mode=0o755, exist_ok=True)
        path = os.path.join(host_layout.state_dir, "agent.log")
        to_file = logging.handlers.RotatingFileHandler(path, maxBytes=AGENT_LOG_MAX_BYTES,
                                                       backupCount=AGENT_LOG_BACKUPS, encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        _handlers.append(to_file)
    except OSError as e:
        console.handle(logging.makeLogRecord({"levelno": logging.WARNING, "levelname": "WARNING",
                                              "msg": f"cannot write agent.log ({e}); logging to stdout only"}))
    for handler in _handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def close_logging() -> None:
    while _handlers:
        handler = _handlers.pop()
        logger.removeHandler(handler)
        handler.close()


def build_agent(config_path: str, *, client_factory: Callable[[str, str | None], Any] | None = None,
                probes: Probes | None = None, clock: Callable[[], float] = time.time,
                logs: bool = True, log_stream: Any = None) -> Agent:
    """The agent as the service runs it: config from ``config_path``, the real probes, and a
    terminate through the Lambda API with the key in ``layout.api_key_path``. Raises ConfigError."""
    config = load_config(config_path)
    host = config.layout
    if logs:
        setup_logging(host, log_stream)
    try:
        mode = os.stat(host.api_key_path).st_mode
        if mode & 0o077:
            logger.warning("the API key file %s can be read by others (mode %o): it should be 0600",
                           host.api_key_path, mode & 0o777)
    except OSError as e:
        logger.warning("the API key file %s is not readable (%s): the host cannot terminate itself until it is",
                       host.api_key_path, e.strerror or e)
    terminate = lambda_terminator(config.instance_id, host.api_key_path, config.api_base_url,
                                  client_factory=client_factory)
    probes = probes or HostProbes(host)
    queue = None
    if isinstance(probes, HostProbes):
        queue = HostGpuQueue(host, probes.docker, lambda: nvidia_smi_uuids(probes.nvidia_smi, probes._run),
                             clock=clock)
    return Agent(config, probes, terminate, clock=clock, queue=queue)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpujob-agent", description="Terminates this GPU host once it is idle.")
    parser.add_argument("--config", default=HostLayout().config_path, help="agent.json (default: %(default)s)")
    parser.add_argument("--once", action="store_true",
                        help="run one real check (it terminates the host if that is due), print the heartbeat "
                             "to stdout (the log goes to stderr), exit")
    args = parser.parse_args(argv)
    try:
        agent = build_agent(args.config, log_stream=sys.stderr if args.once else sys.stdout)
    except ConfigError as e:
        print(f"gpujob-agent: {e}", file=sys.stderr)
        return 2
    if args.once:
        decision = agent.tick()
        print(json.dumps(agent.heartbeat(decision), indent=2, sort_keys=True))
        return 0

    def on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        agent.run_forever()
    except (SystemExit, KeyboardInterrupt):
        logger.info("stopping (the idle timer is kept in the heartbeat)")
    return 0

