"""LambdaClient: the Lambda Cloud operations gpujob uses (instance types, launch, terminate,
instances, SSH keys, file systems), each one call through :class:`.transport.Transport`."""

from __future__ import annotations

import difflib
import logging
import os
import time
from typing import Any, Callable, Iterable, Mapping

from gpujob.hosts.lambda_api.errors import INSUFFICIENT_CAPACITY, CapacityError, LambdaError, LambdaUserError
from gpujob.hosts.lambda_api.key import api_key
from gpujob.hosts.lambda_api.models import Instance, InstanceType
from gpujob.hosts.lambda_api.transport import BASE_URL_ENV, LAUNCH_SPACING_S, MAX_ATTEMPTS, Transport, path_segment

log = logging.getLogger("gpujob.hosts.lambda_api")


class LambdaClient:
    """One Lambda Cloud account, through the public API v1. ``sleep`` and ``clock`` are injectable so
    tests (and the agent) can wait without really waiting."""

    def __init__(self, api_key: str, base_url: str | None = None, *, timeout_s: float = 30,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 max_attempts: int = MAX_ATTEMPTS, launch_interval_s: float = LAUNCH_SPACING_S) -> None:
        self._api = Transport(api_key, base_url, timeout_s=timeout_s, sleep=sleep, clock=clock,
                              max_attempts=max_attempts, launch_interval_s=launch_interval_s)

    @property
    def base_url(self) -> str:
        return self._api.base_url

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, path: str | None = None,
                         **kwargs: Any) -> LambdaClient:
        """The key from :func:`api_key`, the base URL from ``$GPUJOB_LAMBDA_API_URL`` (or the default)."""
        env = os.environ if environ is None else environ
        return cls(api_key(env, path), env.get(BASE_URL_ENV) or None, **kwargs)

    def __repr__(self) -> str:
        return f"LambdaClient(base_url={self.base_url!r})"

    # ------------------------------------------------------------------------------ instance types

    def instance_types(self) -> dict[str, InstanceType]:
        """Every type Lambda offers, with its price and the regions that have capacity now."""
        data = self._api.request("GET", "/instance-types", what="list instance types")
        return {name: InstanceType.from_api(item) for name, item in (data or {}).items()}

    # ----------------------------------------------------------------------------------- instances

    def launch(self, *, instance_type: str, region: str | None = None, ssh_key_names: list[str],
               file_system_names: Iterable[str] = (), name: str | None = None) -> str:
        """Launches one instance and returns its id. Capacity is checked first (no launch request is
        spent on a region without it); ``region=None`` takes the first region with capacity."""
        types = self.instance_types()
        itype = types.get(instance_type)
        if itype is None:
            close = difflib.get_close_matches(instance_type, list(types), n=2, cutoff=0.85)
            mean = f"; did you mean {' or '.join(close)}?" if close else ""
            raise LambdaUserError(
                "global/invalid-parameters", f"Lambda Cloud offers no instance type {instance_type!r}{mean}",
                hint="offered now: " + (", ".join(sorted(types)) or "none"))
        if region is None or region not in itype.regions_with_capacity:
            if region is None and itype.regions_with_capacity:
                region = itype.regions_with_capacity[0]
            else:
                raise self._capacity_error(instance_type, region, types)
        body: dict[str, Any] = {"region_name": region, "instance_type_name": instance_type,
                                "ssh_key_names": list(ssh_key_names),
                                "file_system_names": list(file_system_names)}
        if name is not None:
            body["name"] = name
        what = f"launch {instance_type} in {region}"
        reconcile: Callable[[], Any] | None = None
        if name:
            before = {i.id for i in self.instances() if i.name == name}

            def find_launched() -> Any:
                """After an answer that leaves it unknown whether the launch happened: look for it."""
                found = [i.id for i in self.instances() if i.name == name and i.id not in before]
                return {"instance_ids": found[:1]} if found else None

            reconcile = find_launched

        try:
            data = self._api.request("POST", "/instance-operations/launch", body, what=what,
                                      launch=True, reconcile=reconcile)
        except LambdaError as e:
            if e.code != INSUFFICIENT_CAPACITY:
                raise
            raise self._capacity_error(instance_type, region, self.instance_types(), status=e.status,
                                       suggestion=e.suggestion) from None
        ids = (data or {}).get("instance_ids") or []
        if not ids:
            raise LambdaError("client/bad-response", f"Lambda Cloud answered the launch ({what}) without an "
                              "instance id", hint="check the Lambda Cloud dashboard for a new instance",
                              status=200)
        log.info("launched %s (%s in %s)", ids[0], instance_type, region)
        return ids[0]

    def terminate(self, instance_ids: list[str]) -> list[Instance]:
        ids = list(instance_ids)
        data = self._api.request("POST", "/instance-operations/terminate", {"instance_ids": ids},
                                  what=f"terminate {', '.join(ids)}")
        return [Instance.from_api(d) for d in (data or {}).get("terminated_instances") or []]

    def restart(self, instance_ids: list[str]) -> list[Instance]:
        ids = list(instance_ids)
        data = self._api.request("POST", "/instance-operations/restart", {"instance_ids": ids},
                                  what=f"restart {', '.join(ids)}")
        return [Instance.from_api(d) for d in (data or {}).get("restarted_instances") or []]

    def instances(self) -> list[Instance]:
        """The account's running instances (booting, active, unhealthy, terminating...)."""
        data = self._api.request("GET", "/instances", what="list instances")
        return [Instance.from_api(d) for d in data or []]

    def instance(self, instance_id: str) -> Instance:
        """One instance; an unknown id is a LambdaUserError with code ``global/object-does-not-exist``."""
        data = self._api.request("GET", f"/instances/{path_segment(instance_id)}",
                                 what=f"get instance {instance_id}")
        return Instance.from_api(data or {})

    def rename(self, instance_id: str, name: str) -> Instance:
        data = self._api.request("POST", f"/instances/{path_segment(instance_id)}", {"name": name},
                                  what=f"rename instance {instance_id}")
        return Instance.from_api(data or {})

    # ------------------------------------------------------------------------ ssh keys, file systems

    def ssh_keys(self) -> list[dict]:
        return list(self._api.request("GET", "/ssh-keys", what="list SSH keys") or [])

    def add_ssh_key(self, name: str, public_key: str) -> dict:
        return dict(self._api.request("POST", "/ssh-keys", {"name": name, "public_key": public_key.strip()},
                                       what=f"add SSH key {name!r}") or {})

    def delete_ssh_key(self, key_id: str) -> None:
        self._api.request("DELETE", f"/ssh-keys/{path_segment(key_id)}", what=f"delete SSH key {key_id}")

    def file_systems(self) -> list[dict]:
        return list(self._api.request("GET", "/file-systems", what="list file systems") or [])

    def create_file_system(self, name: str, region: str) -> dict:
        return dict(self._api.request("POST", "/filesystems", {"name": name, "region": region},
                                       what=f"create file system {name!r} in {region}") or {})

    def delete_file_system(self, file_system_id: str) -> None:
        self._api.request("DELETE", f"/filesystems/{path_segment(file_system_id)}",
                           what=f"delete file system {file_system_id}")

    # ------------------------------------------------------------------------------------ plumbing

    def _capacity_error(self, instance_type: str, region: str | None, types: dict[str, InstanceType], *,
                        status: int = 0, suggestion: str | None = None) -> CapacityError:
        itype = types.get(instance_type)
        regions = [r for r in (itype.regions_with_capacity if itype else []) if r != region]
        others = sorted((t for t in types.values() if t.regions_with_capacity and t.name != instance_type),
                        key=lambda t: t.price_cents_per_hour)
        return CapacityError(instance_type, region, regions, alternatives=[t.name for t in others],
                             status=status, suggestion=suggestion)

