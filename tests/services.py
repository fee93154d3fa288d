"""Real services for the tests: a throwaway PostgreSQL server and a two-node Ray cluster.

The test fixtures (``tests/conftest.py``) start them on demand. To start them by hand for
experiments, run ``python tests/services.py``: it prints the storage URL and the Ray
address, and stops both on Ctrl-C.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POSTGRES_USER = "rs_test"
# A throwaway password for a throwaway server on the loopback; tests check it never leaks.
POSTGRES_PASSWORD = "s3cret-Pw-for-tests"
STOP_GRACE_S = 10  # what the cluster's nodes get, together, to end on SIGTERM before SIGKILL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin(name: str) -> str | None:
    """A PostgreSQL server program from the PATH or Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresServer:
    """A PostgreSQL server in a temporary data folder, on a free port of 127.0.0.1.

    PostgreSQL refuses to run as root, so as root its programs run as the ``postgres``
    user that Debian's package creates.

    Raises:
        RuntimeError: PostgreSQL is not installed, or the server does not start.
    """

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
        self.root = Path(tempfile.mkdtemp(prefix="resnet-search-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://{POSTGRES_USER}:{POSTGRES_PASSWORD}@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def start(self) -> PostgresServer:
        if not self.data.exists():
            password_file = self.root / "password"
            self._run_as_owner(["sh", "-c", f"printf %s '{POSTGRES_PASSWORD}' > {password_file}"])
            self._run_as_owner(
                [
                    self.initdb,
                    "-D",
                    str(self.data),
                    "-U",
                    POSTGRES_USER,
                    f"--pwfile={password_file}",
                    "--auth=scram-sha-256",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            )
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run_as_owner(
            [self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "-t", "60", "start"]
        )
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run_as_owner([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run_as_owner(self, command: list[str]) -> None:
        result = subprocess.run(self._as_user + command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed: {result.stderr.strip() or result.stdout.strip()}")


class RayCluster:
    """A Ray cluster of a head node and one worker node on this machine, as ``ray start`` makes.

    Each node runs ``ray start --block`` in a process group of its own, so that stopping
    the cluster ends exactly its processes (``ray stop`` would end every Ray on the machine).

    Args:
        head_cpus: Logical CPUs of the head node.
        worker_cpus: Logical CPUs of the worker node.
    """

    def __init__(self, head_cpus: int = 2, worker_cpus: int = 1) -> None:
        from ray.util import get_node_ip_address

        self.port = free_port()
        self.address = f"{get_node_ip_address()}:{self.port}"  # where `ray start --head` listens
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.nodes: list[subprocess.Popen] = []
        self.root = Path(tempfile.mkdtemp(prefix="resnet-search-ray-"))
        # Ray's token authentication, with a token of this cluster's: drivers that join it
        # need these variables too (``env``), as users of a real cluster do.
        token = self.root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}

    def start(self) -> RayCluster:
        # Ports of this cluster's own (0: the system picks): ``ray start``'s defaults (workers
        # from 10002, the client server on 10001) collide with another cluster on the machine.
        common = ["--disable-usage-stats", "--block", "--min-worker-port=0", "--max-worker-port=0"]
        head = ["--head", f"--port={self.port}", f"--ray-client-server-port={free_port()}"]
        self._start_node([*head, f"--num-cpus={self.head_cpus}", "--include-dashboard=false", *common], "head")
        self._wait_for_nodes(1)
        self._start_node([f"--address={self.address}", f"--num-cpus={self.worker_cpus}", *common], "worker")
        self._wait_for_nodes(2)
        return self

    def close(self) -> None:
        for node in reversed(self.nodes):
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for node in self.nodes:
            try:
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # `ray start --block` can take half a minute to go
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def resources(self) -> tuple[dict, dict]:
        """The cluster's total and available resources, asked from a fresh driver process."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
            "print(json.dumps([ray.cluster_resources(), ray.available_resources()]))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **self.env}, timeout=120
        )
        total, available = json.loads(result.stdout.strip().splitlines()[-1])
        return total, available

    def _start_node(self, args: list[str], name: str) -> None:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 (the node writes to it after we return)
        self.nodes.append(
            subprocess.Popen(
                ["ray", "start", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        )

    def _wait_for_nodes(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(node.poll() is not None for node in self.nodes):
                raise RuntimeError(f"ray start exited; see {self.root}")
            status = subprocess.run(
                ["ray", "status", f"--address={self.address}"],
                capture_output=True,
                text=True,
                env={**os.environ, **self.env},
                timeout=60,
            )
            if status.returncode == 0 and status.stdout.count("node_") >= count:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster did not reach {count} node(s) in {timeout_s:.0f} s")


def main() -> None:
    postgres, ray_cluster = PostgresServer().start(), RayCluster().start()
    variables = " ".join(f"{k}={v}" for k, v in ray_cluster.env.items())
    print(f"storage: {postgres.url}\nray:     {ray_cluster.address} (with {variables})\nCtrl-C stops both", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        ray_cluster.close()
        postgres.close()


if __name__ == "__main__":
    main()
