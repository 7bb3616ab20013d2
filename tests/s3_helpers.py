"""A real S3 endpoint on loopback for the object-storage tests: moto's server mode in a thread of the test
process, bound to 127.0.0.1 on a free port, with one bucket and fake credentials.

The credentials are recognisable (FAKE_SECRET) so a test can grep every file and every line of output for
them. `S3Server.env` is what a user's shell would export; tests put it into os.environ (monkeypatch) only
where they want the driver to see it, so a Ray cluster started before that never inherits it.
"""

from __future__ import annotations

import hashlib
import socket
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

FAKE_KEY_ID = "AKIAUTITESTKEYID0000"
FAKE_SECRET = "uti-fake-secret-9f3c1a7e5b2d4680"  # never a real credential; grepped for in outputs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    port: int
    bucket: str
    server: object = field(repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            # nothing from the developer's ~/.aws and no instance-metadata probing
            "AWS_CONFIG_FILE": "/nonexistent/uti-test-aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/uti-test-aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}".rstrip("/")

    def fs(self):
        """An s3fs client of this server that does not depend on os.environ."""
        import s3fs

        return s3fs.S3FileSystem(key=FAKE_KEY_ID, secret=FAKE_SECRET, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint})

    def upload(self, local: Path, key: str) -> str:
        """Copy a local folder to s3://bucket/key; returns the URL."""
        fs = self.fs()
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            fs.put_file(str(path), f"{self.bucket}/{key}/{path.relative_to(local).as_posix()}")
        return self.url(key)

    def object_hashes(self, prefix: str) -> dict[str, str]:
        """SHA-256 of every object under bucket/prefix, by key relative to it."""
        fs = self.fs()
        root = f"{self.bucket}/{prefix}"
        return {p[len(root) + 1:]: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in sorted(fs.find(root))}


def _forget_clients() -> None:
    """fsspec keeps one s3fs client per set of arguments; one made from AWS_ENDPOINT_URL would still point
    at an earlier module's server (stopped, on another port) when the next module's starts."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def start_s3_server(bucket: str = "uti-test") -> S3Server:
    from moto.server import ThreadedMotoServer

    _forget_clients()

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # moto keeps its buckets in process-wide state, shared by every server this process starts: a module's
    # server starts from nothing, whatever an earlier module's left behind.
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"),
                           timeout=30).close()
    s3 = S3Server(port=port, bucket=bucket, server=server)
    s3.fs().mkdir(bucket)
    return s3


def stop_s3_server(s3: S3Server) -> None:
    s3.server.stop()
    _forget_clients()
