"""Flower's own processes on loopback for the slow tests: a SuperLink, SuperNodes, `flwr run`.

Every process is started in its own session (so the SuperExec and app processes it spawns can
be ended with it) and ended in ``close()``; ports are free ones on 127.0.0.1; FLWR_HOME is a
temporary folder, so nothing touches the user's ~/.flwr."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import fedlease

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def self_signed_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def key_pem(key):
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlease test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName(
                  [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                   x509.DNSName("localhost")]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key_pem(server_key))
    return files


class LocalFlower:
    """A SuperLink and SuperNodes on 127.0.0.1, and `flwr run` against them."""

    def __init__(self, folder: Path, certificates: dict[str, Path] | None = None):
        self.folder = folder
        self.certificates = certificates
        self.home = folder / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.processes: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            # every process must import this checkout's fedlease
            "PYTHONPATH": os.pathsep.join(
                [str(Path(fedlease.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
            # fedlease is installed here already; no `uv sync` of the app's dependencies
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }
        security = ["--insecure"] if certificates is None else []
        conn = ['insecure = true'] if certificates is None else [
            f'root-certificates = "{certificates["ca"]}"']
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "test"\n\n[superlink.test]\n'
            f'address = "127.0.0.1:{self.port}"\n' + "\n".join(conn) + "\n")
        self.security = security

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=self.folder)
        process.log = log
        self.processes.append(process)
        return process

    def start_superlink(self, simulation: bool = False) -> None:
        tls = [] if self.certificates is None else [
            "--ssl-certfile", str(self.certificates["cert"]),
            "--ssl-keyfile", str(self.certificates["key"]),
            "--ssl-ca-certfile", str(self.certificates["ca"])]
        self.start("superlink", ["flower-superlink", *self.security, *tls,
                                 *(["--simulation"] if simulation else []),
                                 "--host", "127.0.0.1", "--port", str(self.port)])
        wait_for(lambda: port_open(self.port), 60, "the SuperLink to listen")

    def start_supernode(self, index: int, node_config: str) -> subprocess.Popen:
        tls = [] if self.certificates is None else [
            "--root-certificates", str(self.certificates["ca"])]
        return self.start(f"supernode-{index}", [
            "flower-supernode", *self.security, *tls,
            "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
            "--node-config", node_config, "--max-wait-time", "120"])

    def run(self, run_config: str, federation_config: str | None = None,
            timeout: float = 540) -> subprocess.CompletedProcess:
        """`flwr run` of this project; ``--stream`` returns when the run has ended."""
        command = ["flwr", "run", str(PROJECT_ROOT), "test", "--run-config", run_config,
                   "--stream"]
        if federation_config:
            command += ["--federation-config", federation_config]
        return subprocess.run(command, env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.folder)

    def stop(self, process: subprocess.Popen) -> None:
        """End the process and everything it started (its session)."""
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=30)
        process.log.close()

    def close(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.folder.glob("*.log")))


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(1)
