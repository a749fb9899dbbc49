"""Real OpenSSH servers on loopback for the deploy tests.

Each server is ``/usr/sbin/sshd -D -e`` (a child process, not a daemon) on a free
127.0.0.1 port with a throwaway host key; clients log in with a throwaway user key
through an ssh_config file of aliases (``edge-test-<n>``), exactly as a user's
``~/.ssh/config`` would be used. Nothing outside the pytest temp directories is
touched, except ``/run/sshd`` (sshd's privilege-separation directory) when missing.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edge-tl-test", "-f", str(path)], check=True)


@dataclass
class SshServer:
    """One sshd on loopback; ``alias`` is its Host entry in the shared client config."""

    index: int
    root: Path
    user_key: Path
    known_hosts: Path
    client_config: Path
    extra_path: Path  # first on the remote PATH (stand-in tools go here)
    port: int = 0
    proc: subprocess.Popen | None = None
    host_key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.extra_path.mkdir(parents=True, exist_ok=True)
        self.host_key = self.root / "host_key"
        _keygen(self.host_key)

    @property
    def alias(self) -> str:
        return f"edge-test-{self.index}"

    def _write_config(self) -> Path:
        python_dir = Path(sys.executable).parent
        cfg = self.root / "sshd_config"
        cfg.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.user_key}.pub\nPidFile {self.root / 'sshd.pid'}\n"
            "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nMaxSessions 50\nMaxStartups 50\n"
            # The remote PATH: stand-in tools first, then the test's Python (the "device's" python3).
            f"SetEnv PATH={self.extra_path}:{python_dir}:/usr/local/bin:/usr/bin:/bin\n"
        )
        return cfg

    def start(self) -> None:
        for _ in range(3):
            if not self.port:
                self.port = _free_port()
            log = open(self.root / "sshd.log", "ab")
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self._write_config())], stdout=log, stderr=log)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.05)
            self.stop()
            self.port = 0  # another process took the port: pick a new one
        raise RuntimeError(f"sshd did not start; see {self.root / 'sshd.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None

    def host_key_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key.with_suffix('.pub').read_text().strip()}\n"


class SshLab:
    """Starts servers on demand; all share one user key, one known_hosts and one client config."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.user_key = root / "user_key"
        _keygen(self.user_key)
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text("")
        self.client_config = root / "ssh_config"
        self.client_config.write_text("")
        self.servers: list[SshServer] = []

    def start(self, *, trust: bool = True) -> SshServer:
        index = len(self.servers)
        server = SshServer(
            index=index,
            root=self.root / f"server{index}",
            user_key=self.user_key,
            known_hosts=self.known_hosts,
            client_config=self.client_config,
            extra_path=self.root / f"server{index}" / "bin",
        )
        server.start()
        self.servers.append(server)
        with open(self.client_config, "a", encoding="utf-8") as fh:
            fh.write(
                f"Host {server.alias}\n  HostName 127.0.0.1\n  Port {server.port}\n  User {getpass.getuser()}\n"
                f"  IdentityFile {self.user_key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {self.known_hosts}\n\n"
            )
        if trust:
            with open(self.known_hosts, "a", encoding="utf-8") as fh:
                fh.write(server.host_key_line())
        return server

    def options(self, **overrides):
        from edge_tl.deploy.ssh import SshOptions

        kwargs = {"config_file": self.client_config, "connect_timeout_s": 5, "retries": 1, "backoff_s": 0.2}
        kwargs.update(overrides)
        return SshOptions(**kwargs)

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="session")
def ssh_lab(tmp_path_factory: pytest.TempPathFactory):
    if not os.path.isdir("/run/sshd"):
        if os.geteuid() != 0:
            pytest.skip("sshd needs its privilege-separation directory /run/sshd (create it as root)")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    lab = SshLab(tmp_path_factory.mktemp("ssh-lab"))
    yield lab
    lab.stop_all()


@pytest.fixture(scope="session")
def sshd(ssh_lab: SshLab) -> SshServer:
    """The one loopback device most tests deploy to (its host key is trusted)."""
    return ssh_lab.start()


def _build_small_run(root: Path) -> Path:
    """A digits run made through the library API (used until the shared ``digits_run`` fixture exists)."""
    from edge_tl.data import load_dataset, save_split
    from edge_tl.export import ExportConfig, ParityTolerance, export_run
    from edge_tl.models import Weights, WeightsSource, build_model, get_backbone
    from edge_tl.models.checkpoint import save_checkpoint
    from edge_tl.runs import Run

    split = load_dataset("digits", val_split=0.2, seed=0)
    prep = get_backbone("efficientnet_lite0").preprocessing.with_input_size(32)
    run = Run.create(
        root,
        backbone={"name": "efficientnet_lite0"},
        preprocessing=prep.to_dict(),
        classes=list(split.classes),
        data={"source": "digits", "split_file": "split.json"},
    )
    save_split(split, root / "split.json")
    model = build_model("efficientnet_lite0", len(split.classes), weights=Weights(WeightsSource.NONE))
    save_checkpoint(root / "checkpoints" / "best.pt", {"model": model.state_dict()})
    run.add_artifact("checkpoint-best", kind="checkpoint", path=root / "checkpoints" / "best.pt", stage="finetune")
    export_run(
        root,
        config=ExportConfig(parity_images=16, fp16_tolerance=ParityTolerance(atol=None, rtol=0.0, min_agreement=0.0)),
    )
    return root


@pytest.fixture(scope="session")
def deployable_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only run with ``onnx-fp32``: the shared ``digits_run`` when it exists, exported if needed."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from edge_tl.deploy.api import compute_reference
    from edge_tl.deploy.bundle import make_bundle
    from edge_tl.export import export_run
    from edge_tl.runs import Run

    try:
        source = Path(request.getfixturevalue("digits_run"))
    except pytest.FixtureLookupError:
        root = _build_small_run(tmp_path_factory.mktemp("deploy-run") / "run")
    else:
        root = Path(shutil.copytree(source, tmp_path_factory.mktemp("deploy-run") / "run"))
        if not Run.open(root).has_artifact("onnx-fp32"):
            export_run(root)
    # The tests deploy 64 evaluation images: run the reference models on them once, here
    # (cached in the run, so every copy of it starts with the cache).
    run = Run.open(root)
    compute_reference(run, make_bundle(run, target="x86-64", precision="fp32", eval_images=64))
    return root


@pytest.fixture(scope="session")
def edge_tl_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edge-tl wheel python mode installs on the device, built once per session."""
    from edge_tl.deploy.api import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


def install_standin_trtexec(server: SshServer, replay_log: Path) -> Path:
    """Put the STAND-IN trtexec (tests/deploy/standin_trtexec.py) first on ``server``'s remote PATH."""
    text = (HERE / "standin_trtexec.py").read_text().replace("@REPLAY_LOG@", str(replay_log))
    text = text.replace("@OPTIONS_DIR@", str(HERE.parent / "compile" / "trtexec_options"))
    path = server.extra_path / "trtexec"
    path.write_text(f"#!{sys.executable}\n{text}")
    path.chmod(0o755)
    return path


def standin_xavier_profile(folder: Path) -> Path:
    """A Xavier profile that lists TensorRT 8.4.0, the version of the replayed trtexec log
    (tests/compile/fixtures/trtexec-8.4-jetson-agx-xavier.log)."""
    text = (HERE.parents[1] / "targets" / "jetson-agx-xavier.toml").read_text()
    text = text.replace('name = "jetson-agx-xavier"', 'name = "standin-xavier-trt84"').replace(
        'default = "8.5.2"', 'default = "8.4.0"'
    )
    text += '\n[[tensorrt.releases]]\njetpack = "5.0"\nversion = "8.4.0"\ncuda = "11.4"\n'
    path = folder / "standin-xavier-trt84.toml"
    path.write_text(text)
    return path


def cut_link_config(ssh_lab: SshLab, server: SshServer, folder: Path) -> tuple[Path, Path]:
    """An ssh config that reaches ``server`` through tests/deploy/slow_link.py, and the folder
    whose control files cut or slow that link: ``(control, config)``."""
    control = folder / "link"
    control.mkdir()
    config = folder / "ssh_config"
    config.write_text(
        ssh_lab.client_config.read_text().replace(
            f"Host {server.alias}\n",
            f"Host {server.alias}\n  ProxyCommand {sys.executable} {HERE / 'slow_link.py'} {server.port} {control}\n",
        )
    )
    return control, config


def install_standin_tegrastats(server: SshServer) -> Path:
    """Put the STAND-IN tegrastats (tests/deploy/standin_tegrastats.py) on ``server``'s remote PATH."""
    path = server.extra_path / "tegrastats"
    path.write_text(f"#!{sys.executable}\n" + (HERE / "standin_tegrastats.py").read_text())
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def standin_tegrastats():
    """``install(server)``: puts the STAND-IN tegrastats on a test device's PATH."""
    return install_standin_tegrastats


@pytest.fixture(scope="session")
def standin_trtexec():
    """``install(server, replay_log)``: puts the STAND-IN trtexec on a test device's PATH."""
    return install_standin_trtexec


@pytest.fixture
def xavier_profile(tmp_path: Path) -> Path:
    return standin_xavier_profile(tmp_path)


@pytest.fixture
def cut_link(ssh_lab: SshLab, tmp_path: Path):
    """``cut_link(server) -> (control, config)``: see :func:`cut_link_config`."""
    return lambda server: cut_link_config(ssh_lab, server, tmp_path)
