"""A real S3 API on 127.0.0.1: moto's server mode (``python -m moto.server``), one process per test
session, reached through ``AWS_ENDPOINT_URL`` the way R2, MinIO or Ceph are.

moto accepts any keys unless told to check them: :func:`start_s3` with ``check_keys=True`` starts one
that answers 403 (InvalidAccessKeyId) to keys it did not issue, for the "access denied" tests.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

KEYS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    url: str
    process: subprocess.Popen
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    held: socket.socket | None = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"], region_name=KEYS["AWS_DEFAULT_REGION"])

    def bucket(self, prefix: str = "bkt") -> str:
        """A new empty bucket (a fresh name per call)."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.held is not None:
            self.held.close()
            self.held = None

    def go_away(self) -> None:
        """The server gone, mid-test: it stops, and its port stays ours until :meth:`stop`, resetting every
        connection, so that no other server (another test worker's moto, started on a port it found free)
        takes the port and answers in its place. Held by listening: a port merely bound (SO_REUSEADDR, which
        the server's TIME_WAIT connections require) can still be taken by a server that listens on it."""
        port = int(self.url.rsplit(":", 1)[1])
        self.stop()
        held = socket.socket()
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", port))
        held.listen(16)
        self.held = held

        def reset_every_connection() -> None:
            while True:
                try:
                    conn, _ = held.accept()
                except OSError:
                    return  # closed by stop()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # a reset, at once

        threading.Thread(target=reset_every_connection, daemon=True).start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3(log_dir: Path, check_keys: bool = False, port: int | None = None) -> S3Server:
    port = port or free_port()
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if check_keys else {})}
    log = log_dir / f"moto-{port}.log"
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("moto server did not start in 30 s")
    return S3Server(url, process, log, {**KEYS, "AWS_ENDPOINT_URL": url})
