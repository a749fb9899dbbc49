"""The SSH transport against real loopback sshd servers: host keys, keys, reachability, quoting."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edge_tl.deploy.ssh import HostKeyPolicy, SshEndpoint, SshTransport
from edge_tl.errors import ConfigError, RemoteError

pytestmark = pytest.mark.ssh


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("jetson", SshEndpoint("jetson")),
        ("nvidia@10.0.0.5", SshEndpoint("10.0.0.5", user="nvidia")),
        ("nvidia@orin.local:2222", SshEndpoint("orin.local", user="nvidia", port=2222)),
        ("[::1]:2200", SshEndpoint("::1", port=2200)),
    ],
)
def test_endpoint_parse(text, expected):
    assert SshEndpoint.parse(text) == expected
    assert SshEndpoint.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "bad",
    ["", "a@b@c", "host:99999", "-oProxyCommand=x", "host:port", "a b",
     # Shell syntax that an older ssh would run through ProxyCommand's %h, and quotes.
     "$(touch x)", "`id`", "h;id", "h|id", "u$(id)@h", "a'b", 'a"b', "h&", "[::1;id]", "h\nx", "~h"],
)  # fmt: skip
def test_endpoint_parse_rejects(bad):
    with pytest.raises(ConfigError, match="HOST"):
        SshEndpoint.parse(bad)


def test_alias_from_config_and_quoting(sshd, ssh_lab):
    nasty = ["a b", "it's", 'x"y', "a;touch /tmp/edge-tl-pwned", "$(id)", "`id`", "*", "\\n", ""]
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
        out = ssh.run(["printf", "%s\\n", *nasty]).text
    assert out.split("\n")[:-1] == nasty
    assert not Path("/tmp/edge-tl-pwned").exists()


def test_remote_exit_status_is_an_error_with_stderr(sshd, ssh_lab):
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
        assert ssh.run(["sh", "-c", "exit 3"], check=False).returncode == 3
        with pytest.raises(RemoteError, match="exit status 3.*boom"):
            ssh.run(["sh", "-c", "echo boom >&2; exit 3"], what="probe")


def _fingerprint(server) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(server.host_key) + ".pub"], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


def test_unknown_host_key_refused_then_accept_new(ssh_lab, tmp_path):
    server = ssh_lab.start(trust=False)
    try:
        fresh = tmp_path / "known_hosts"
        with pytest.raises(RemoteError) as info:
            with SshTransport(server.alias, ssh_lab.options(known_hosts_file=fresh)) as ssh:
                ssh.run(["true"])
        message = str(info.value)
        assert "not in known_hosts" in message and _fingerprint(server) in message
        assert "--accept-new-host-key" in message
        # Explicit accept-new: the key is recorded, and later strict connections work.
        with SshTransport(
            server.alias, ssh_lab.options(known_hosts_file=fresh, host_key_policy=HostKeyPolicy.ACCEPT_NEW)
        ) as ssh:
            ssh.run(["true"])
        assert f"[127.0.0.1]:{server.port}" in fresh.read_text()
        with SshTransport(server.alias, ssh_lab.options(known_hosts_file=fresh)) as ssh:
            ssh.run(["true"])
    finally:
        server.stop()


def test_changed_host_key_refused_even_with_accept_new(sshd, ssh_lab, tmp_path):
    impostor = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {impostor.with_suffix('.pub').read_text()}")
    with pytest.raises(RemoteError, match="CHANGED") as info:
        with SshTransport(
            sshd.alias, ssh_lab.options(known_hosts_file=wrong, host_key_policy=HostKeyPolicy.ACCEPT_NEW)
        ) as ssh:
            ssh.run(["true"])
    assert _fingerprint(sshd) in str(info.value)
    # The known_hosts entry of a host off port 22 is "[host]:port": the fix names exactly that.
    fix = f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {wrong}"
    assert fix in str(info.value)
    subprocess.run(fix, shell=True, check=True, capture_output=True)
    assert wrong.read_text().strip() == ""  # the advised command really removed the entry


def test_wrong_user_key(sshd, ssh_lab, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    empty = tmp_path / "ssh_config"
    empty.write_text("")
    options = ssh_lab.options(config_file=empty, identity_file=stranger, known_hosts_file=ssh_lab.known_hosts)
    with pytest.raises(RemoteError, match="authentication failed"):
        with SshTransport(f"root@127.0.0.1:{sshd.port}", options) as ssh:
            ssh.run(["true"])


def test_unreachable_host(ssh_lab, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    empty = tmp_path / "ssh_config"
    empty.write_text("")
    options = ssh_lab.options(config_file=empty, known_hosts_file=ssh_lab.known_hosts, retries=2, backoff_s=0.05)
    with pytest.raises(RemoteError, match=r"unreachable after 3 attempt\(s\).*refused"):
        with SshTransport(f"root@127.0.0.1:{port}", options) as ssh:
            ssh.run(["true"])


def test_remote_exit_255_is_the_commands_status_not_a_lost_connection(sshd, ssh_lab, tmp_path):
    counter = tmp_path / "ran"
    with SshTransport(sshd.alias, ssh_lab.options(retries=2, backoff_s=0.05)) as ssh:
        result = ssh.run(
            ["sh", "-c", 'echo x >> "$1"; echo out; echo err >&2; exit 255', "sh", str(counter)], check=False
        )
        assert (result.returncode, result.text, result.stderr) == (255, "out\n", "err\n")
        with pytest.raises(RemoteError, match="failed with exit status 255: err"):
            ssh.run(["sh", "-c", "echo err >&2; exit 255"])
    assert counter.read_text() == "x\n"  # run once: not retried as if the link had dropped


@pytest.mark.parametrize("kind", ["60 characters", "a space"])
def test_long_or_spaced_tmpdir_still_connects_and_multiplexes(sshd, ssh_lab, tmp_path_factory, monkeypatch, kind):
    import os
    import tempfile

    if kind == "a space":
        base = Path(tempfile.mkdtemp(prefix="e t", dir="/tmp"))
    else:
        base = tmp_path_factory.mktemp("t")
        base = base / ("x" * (60 - len(str(base)) - 1))
        base.mkdir()
        assert len(str(base)) == 60
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
        assert ssh.run(["echo", "hi"]).text == "hi\n"
        assert ssh.run(["echo", "again"]).text == "again\n"
        sockets = [p for p in Path(ssh._control_dir).iterdir()] if ssh._control_dir else []
        assert len(sockets) == 1 and sockets[0].is_socket()  # one shared connection, not one per command
        assert len(str(sockets[0])) + 17 <= 103
    if kind == "a space":
        os.rmdir(base)


def test_known_hosts_path_with_a_space(ssh_lab, tmp_path):
    server = ssh_lab.start(trust=False)
    try:
        folder = tmp_path / "my keys"
        folder.mkdir()
        known = folder / "known hosts"
        # accept-new writes the key into that very file (not into a stray "my" file) ...
        with SshTransport(
            server.alias, ssh_lab.options(known_hosts_file=known, host_key_policy=HostKeyPolicy.ACCEPT_NEW)
        ) as ssh:
            ssh.run(["true"])
        assert f"[127.0.0.1]:{server.port}" in known.read_text()
        assert sorted(p.name for p in folder.iterdir()) == ["known hosts"] and not (Path.cwd() / "my").exists()
        # ... and strict checking accepts the key that is in it.
        with SshTransport(server.alias, ssh_lab.options(known_hosts_file=known)) as ssh:
            assert ssh.run(["echo", "ok"]).text == "ok\n"
    finally:
        server.stop()
