"""Instance types (with price and the regions that have capacity) and instances, as the
Lambda Cloud API describes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

INSTANCE_STATUSES = ("booting", "active", "unhealthy", "terminating", "terminated", "preempted")


@dataclass(frozen=True)
class InstanceType:
    name: str
    description: str
    gpu_description: str
    price_cents_per_hour: int
    vcpus: int
    memory_gib: int
    storage_gib: int
    gpus: int
    regions_with_capacity: list[str] = field(default_factory=list)

    @property
    def price_per_hour(self) -> float:
        """US dollars per hour."""
        return self.price_cents_per_hour / 100

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> InstanceType:
        t = item.get("instance_type") or {}
        specs = t.get("specs") or {}
        return cls(
            name=t.get("name", ""), description=t.get("description", ""),
            gpu_description=t.get("gpu_description", ""),
            price_cents_per_hour=int(t.get("price_cents_per_hour") or 0),
            vcpus=int(specs.get("vcpus") or 0), memory_gib=int(specs.get("memory_gib") or 0),
            storage_gib=int(specs.get("storage_gib") or 0), gpus=int(specs.get("gpus") or 0),
            regions_with_capacity=[r.get("name", "") for r in item.get("regions_with_capacity_available") or []],
        )


@dataclass(frozen=True)
class Instance:
    id: str
    name: str | None
    status: str
    ip: str | None                    # None while booting
    region: str | None
    instance_type: str | None         # the type's name
    price_cents_per_hour: int | None
    ssh_key_names: list[str]
    file_system_names: list[str]
    hostname: str | None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def price_per_hour(self) -> float | None:
        return None if self.price_cents_per_hour is None else self.price_cents_per_hour / 100

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> Instance:
        itype = d.get("instance_type") or {}
        price = itype.get("price_cents_per_hour")
        return cls(
            id=d.get("id", ""), name=d.get("name") or None, status=d.get("status", ""),
            ip=d.get("ip") or None, region=(d.get("region") or {}).get("name"),
            instance_type=itype.get("name"), price_cents_per_hour=None if price is None else int(price),
            ssh_key_names=list(d.get("ssh_key_names") or []),
            file_system_names=list(d.get("file_system_names") or []),
            hostname=d.get("hostname") or None, raw=dict(d),
        )
