"""A job's handle: what its backend recorded to find the job again (a process, a container, a Kubernetes
Job). Each backend owns its model, a :class:`Handle` with its own fields; the registry stores it as JSON
(``Job.handle``, plain data only at that edge) and the backend reads it back validated with ``Model.of(job)``.

A handle is untrusted (the registry file can be edited, or was written by another version): a key whose
value is not what the model says is read as unknown (None), and named in :attr:`Handle.unreadable`, so
``gpujob list`` and ``status`` say what they can instead of failing on one record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

if TYPE_CHECKING:
    from typing import Self

    from gpujob.records import Job


class Handle(BaseModel):
    """The keys every backend's handle may hold, read by the layers above (the service, the CLI); a
    backend's model adds its own. Keys this version does not know are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    # a queued job's place in a GPU queue (position and words), recorded while it waits
    queue: dict[str, Any] | None = None
    # variables named like secrets that the job does not get (the local backend's, from your environment)
    withheld: list[str] | None = None
    # the price the backend learnt at submit (a rented host's), USD cents per hour
    price_cents_per_hour: float | None = None
    # the code the job came from (gitsource.source: dir, commit, dirty), recorded by the service
    source: dict[str, Any] | None = None
    # what a registry rebuild could not read of the job's folder
    damaged: str | None = None

    _unreadable: tuple[str, ...] = PrivateAttr(default=())

    @classmethod
    def of(cls, job: "Job") -> "Self":
        """The job's handle as this model: :meth:`read` of what the registry recorded."""
        return cls.read(job.handle)

    @classmethod
    def read(cls, data: Mapping[str, Any] | None) -> "Self":
        """``data`` validated; a key that does not validate is left out (read as None), never an error."""
        data = dict(data) if isinstance(data, Mapping) else {}
        dropped: list[str] = []
        while True:
            try:
                handle = cls.model_validate(data)
            except ValidationError as e:
                bad = {str(err["loc"][0]) for err in e.errors() if err["loc"]} & set(data)
                if not bad:  # not one key's fault: nothing of it is known
                    dropped += sorted(data)
                    data = {}
                    continue
                dropped += sorted(bad)
                data = {k: v for k, v in data.items() if k not in bad}
                continue
            handle._unreadable = tuple(dropped)
            return handle

    @property
    def unreadable(self) -> tuple[str, ...]:
        """The recorded keys that were not what this model says (read as None)."""
        return self._unreadable

    def dump(self) -> dict[str, Any]:
        """The handle as plain data, for the registry: the keys given or read (a default is not written),
        less those that are None."""
        return {k: v for k, v in self.model_dump(mode="json", exclude_unset=True).items() if v is not None}
