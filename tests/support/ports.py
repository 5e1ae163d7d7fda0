"""A loopback port that refuses connections: the network denied, a server gone.

Held for the whole block, bound and never listening. A port found free and let go can be taken by another
test worker's server meanwhile, which then answers in the refused port's place (an S3 test once got a
403 from another worker's moto server that way)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def refusing_port() -> Iterator[int]:
    with socket.socket() as held:  # no SO_REUSEADDR: no other socket can bind the port while it is held
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]
