"""The SSH transport's own decisions, fast and in process: the ssh command line it builds (host-key
policy, timeouts, quoting), how it reads ssh's failures, when it retries, and what it tells the user.

The loopback-sshd tests (test_deploy_ssh.py) show that real OpenSSH agrees; these run the same
code against a stand-in ``ssh`` first on PATH that runs the remote command with the local ``sh``
(as sshd runs it with the login shell), or fails the way ssh fails (exit 255, its own message on
stderr), so each case costs milliseconds. ``ssh -G`` (configuration only, no connection) goes to
the real client.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_tl.deploy import ssh as ssh_module
from edge_tl.deploy.ssh import (
    HostKeyPolicy,
    RemoteResult,
    SshEndpoint,
    SshOptions,
    SshTransport,
    remote_command,
    sh_script,
)
from edge_tl.errors import ConfigError, MissingDependency, RemoteError

REAL_SSH = shutil.which("ssh")
pytestmark = pytest.mark.skipif(REAL_SSH is None, reason="needs the OpenSSH client")

_STANDIN = r"""#!/bin/sh
# Each call: its arguments, one per line, then a line "--end--".
for a; do printf '%s\n' "$a"; done >> "$STANDIN_LOG"
echo --end-- >> "$STANDIN_LOG"
for a; do last=$a; done
for a; do
  case "$a" in
    -G) exec "$REAL_SSH" "$@" ;;
    -O) echo "Exit request sent." >&2; exit 0 ;;
  esac
done
calls=$(grep -c -- --end-- "$STANDIN_LOG")
if [ -n "$STANDIN_FAILS" ] && [ "$calls" -le "$STANDIN_FAILS" ]; then
  printf '%b' "$STANDIN_FAIL" >&2
  exit 255
fi
[ -n "$STANDIN_SLEEP" ] && exec sleep "$STANDIN_SLEEP"
# A login shell that ends without running the status trailer (not a POSIX sh).
[ -n "$STANDIN_EXIT" ] && { echo "fish: Unsupported use of '='." >&2; exit "$STANDIN_EXIT"; }
exec sh -c "$last"
"""


class Standin:
    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        ssh = self.bin / "ssh"
        ssh.write_text(_STANDIN)
        ssh.chmod(ssh.stat().st_mode | stat.S_IXUSR)
        self.log = root / "ssh-calls"
        self.log.write_text("")
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("STANDIN_LOG", str(self.log))
        monkeypatch.setenv("REAL_SSH", REAL_SSH)
        self.sleeps: list[float] = []
        # The back-off waits are recorded instead of slept (only the transport's own clock).
        monkeypatch.setattr(ssh_module, "time", SimpleNamespace(sleep=self.sleeps.append))

    def fail(self, stderr: str, *, times: int = 99) -> None:
        self.monkeypatch.setenv("STANDIN_FAIL", stderr)
        self.monkeypatch.setenv("STANDIN_FAILS", str(times))

    def calls(self) -> list[list[str]]:
        out, current = [], []
        for line in self.log.read_text().split("\n")[:-1]:
            if line == "--end--":
                out.append(current)
                current = []
            else:
                current.append(line)
        return out

    def connections(self) -> list[list[str]]:
        """The calls that ran a remote command (not ``-G`` or ``-O exit``)."""
        return [c for c in self.calls() if "-G" not in c and "-O" not in c]


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Standin:
    return Standin(tmp_path, monkeypatch)


def _options(**overrides) -> SshOptions:
    return SshOptions(**{"multiplex": False, "retries": 2, "backoff_s": 0.5, **overrides})


# --------------------------------------------------------------------------- endpoints and options


@pytest.mark.parametrize(
    ("text", "host", "user", "port", "shown", "label"),
    [
        ("jetson", "jetson", None, None, "jetson", "jetson"),
        ("  nvidia@orin.local:2222 ", "orin.local", "nvidia", 2222, "nvidia@orin.local:2222", "orin.local_2222"),
        ("root@[fe80::1%eth0]:22", "fe80::1%eth0", "root", 22, "root@[fe80::1%eth0]:22", "fe80__1_eth0_22"),
        ("[::1]", "::1", None, None, "[::1]", "__1"),
        ("h:1", "h", None, 1, "h:1", "h_1"),
        ("h:65535", "h", None, 65535, "h:65535", "h_65535"),
        ("_a.b-c", "_a.b-c", None, None, "_a.b-c", "_a.b-c"),
    ],
)
def test_endpoint_text_display_and_folder_label(text, host, user, port, shown, label) -> None:
    endpoint = SshEndpoint.parse(text)
    assert (endpoint.host, endpoint.user, endpoint.port) == (host, user, port)
    assert str(endpoint) == shown and endpoint.label == label


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_endpoint_port_out_of_range(port: str) -> None:
    with pytest.raises(ConfigError) as info:
        SshEndpoint.parse(f"u@h:{port}")
    assert str(info.value) == f"port {port} in 'u@h:{port}' is not in 1..65535; give [user@]HOST[:PORT]"


def test_endpoint_rejection_names_the_form_and_examples() -> None:
    with pytest.raises(ConfigError) as info:
        SshEndpoint.parse("h;id")
    assert str(info.value) == (
        "'h;id' is not a host: give [user@]HOST[:PORT] with letters, digits, '.', '_' and '-' only (IPv6 in brackets), "
        "e.g. jetson, nvidia@10.0.0.5 or nvidia@orin.local:2222 (an alias from ~/.ssh/config works too)"
    )
    for bad in ("   ", "-h", "u@-h"):
        with pytest.raises(ConfigError, match="is not a host"):
            SshEndpoint.parse(bad)


def test_options_defaults_are_strict_and_bounded() -> None:
    options = SshOptions()
    assert options.host_key_policy is HostKeyPolicy.STRICT
    assert (options.connect_timeout_s, options.retries, options.backoff_s, options.multiplex) == (10, 2, 1.0, True)
    assert (options.config_file, options.identity_file, options.known_hosts_file) == (None, None, None)


def test_options_refuse_bad_values_with_the_value(tmp_path: Path) -> None:
    SshOptions(connect_timeout_s=1, retries=0, backoff_s=0.0)  # the smallest allowed
    with pytest.raises(ConfigError) as info:
        SshOptions(connect_timeout_s=0)
    assert str(info.value) == "connect timeout must be >= 1 s, got 0"
    with pytest.raises(ConfigError) as info:
        SshOptions(retries=-1)
    assert str(info.value) == "retries and back-off must be >= 0, got -1 / 1.0"
    with pytest.raises(ConfigError, match=r"got 2 / -0.5$"):
        SshOptions(backoff_s=-0.5)
    with pytest.raises(ConfigError) as info:
        SshOptions(config_file=tmp_path / "nope")
    assert str(info.value) == f"config file {str(tmp_path / 'nope')!r} does not exist"
    with pytest.raises(ConfigError) as info:
        SshOptions(identity_file=tmp_path / "key")
    assert str(info.value) == f"identity file {str(tmp_path / 'key')!r} does not exist"
    # known_hosts may not exist yet: accept-new creates it.
    assert SshOptions(known_hosts_file=tmp_path / "new").known_hosts_file == tmp_path / "new"


# --------------------------------------------------------------------------- what is sent


def test_remote_command_quotes_every_argument_as_one_word() -> None:
    assert remote_command(["printf", "%s\n", "a b", "it's", "$(id)", ";", "", 3]) == (
        "printf '%s\n' 'a b' 'it'\"'\"'s' '$(id)' ';' '' 3"
    )
    with pytest.raises(ValueError) as info:
        remote_command([])
    assert str(info.value) == "empty remote command"
    assert sh_script('echo "$1"', "x y", "z") == ["sh", "-c", 'echo "$1"', "sh", "x y", "z"]


def test_ssh_command_line_is_strict_batch_and_bounded_by_default(standin: Standin) -> None:
    transport = SshTransport("jetson", SshOptions(multiplex=False))
    assert transport.ssh_argv("true") == [
        str(standin.bin / "ssh"),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
        "--", "jetson", "true",
    ]  # fmt: skip


def test_ssh_command_line_with_every_option(standin: Standin, tmp_path: Path) -> None:
    config, key = tmp_path / "cfg", tmp_path / "my key"
    config.write_text("")
    key.write_text("")
    options = SshOptions(host_key_policy=HostKeyPolicy.ACCEPT_NEW, config_file=config, identity_file=key,
                         known_hosts_file=tmp_path / "known 100%", connect_timeout_s=3, multiplex=False)  # fmt: skip
    argv = SshTransport("nvidia@orin:2222", options).ssh_argv("cmd")
    assert argv == [
        str(standin.bin / "ssh"), "-F", str(config),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", "-o", "ConnectTimeout=3",
        "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
        "-o", f'UserKnownHostsFile="{tmp_path}/known 100%%"',
        "-i", str(key), "-o", "IdentitiesOnly=yes",
        "-p", "2222", "-l", "nvidia", "--", "orin", "cmd",
    ]  # fmt: skip


def test_a_path_ssh_cannot_take_is_refused(standin: Standin, tmp_path: Path) -> None:
    bad = str(tmp_path / 'a"b')
    transport = SshTransport("h", _options(known_hosts_file=bad))
    with pytest.raises(ConfigError) as info:
        transport.ssh_argv("true")
    assert str(info.value) == f"ssh cannot be given a path holding a double quote: {bad!r}"


def test_no_ssh_client_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependency) as info:
        SshTransport("h")
    assert str(info.value) == "the OpenSSH client `ssh` is not on PATH; install it (apt install openssh-client)"


# --------------------------------------------------------------------------- connection sharing


def test_multiplexing_uses_a_private_short_socket_folder_and_close_removes_it(standin: Standin) -> None:
    with SshTransport("h", SshOptions()) as transport:
        folder = transport._control_dir
        assert folder is not None and Path(folder).is_dir()
        assert stat.S_IMODE(Path(folder).stat().st_mode) == 0o700  # the socket grants the connection
        argv = transport.ssh_argv("true")
        assert argv[-9:-3] == [
            "-o",
            "ControlMaster=auto",
            "-o",
            f'ControlPath="{folder}"/%C',
            "-o",
            "ControlPersist=120",
        ]
        transport.run(["true"])
    assert not Path(folder).exists() and transport._control_dir is None
    assert standin.calls()[-1][-4:] == ["-O", "exit", "--", "h"]  # the shared connection is closed
    transport.close()  # twice is harmless
    with SshTransport("h", SshOptions(multiplex=False)) as transport:
        assert transport._control_dir is None and "ControlMaster=auto" not in transport.ssh_argv("true")


def test_socket_folder_falls_back_to_tmp_when_the_temp_dir_is_too_long(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base = tmp_path / ("x" * max(1, 103 - len("/etl-xxxxxxxx") - 58 - len(str(tmp_path))))
    base.mkdir()
    assert len(str(base)) + len("/etl-xxxxxxxx") + 58 > 103
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    folder = ssh_module._control_dir()
    assert folder is not None and Path(folder).parent == Path("/tmp")
    os.rmdir(folder)
    # exactly at the limit still fits
    exact = Path(tempfile.mkdtemp(prefix="y" * (103 - len("/etl-xxxxxxxx") - 58 - len("/tmp/") - 8), dir="/tmp"))
    try:
        assert len(str(exact)) + len("/etl-xxxxxxxx") + 58 == 103
        monkeypatch.setattr(tempfile, "tempdir", str(exact))
        folder = ssh_module._control_dir()
        assert folder is not None and Path(folder).parent == exact
        assert len(folder) + len("/") + 40 + 17 <= 103  # the socket ssh binds there fits
    finally:
        shutil.rmtree(exact)


# --------------------------------------------------------------------------- running


def test_run_returns_status_output_and_stderr_without_the_exit_tag(standin: Standin, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"streamed")
    with SshTransport("h", _options()) as transport, open(tmp_path / "in", "rb") as stream:
        result = transport.run(["sh", "-c", "echo out; echo err >&2; exit 4"], check=False)
        assert result == RemoteResult(4, b"out\n", "err\n") and result.text == "out\n"
        assert transport.run(["printf", "%s|", "a b", "$(id)", "it's"]).text == "a b|$(id)|it's|"
        assert transport.run(["cat"], stdin=b"bytes in").stdout == b"bytes in"
        assert transport.run(["cat"], stdin=stream).stdout == b"streamed"
        assert transport.run(["cat"]).stdout == b""  # no stdin: never waits on the terminal


def test_a_failing_command_names_host_label_status_and_its_last_lines(standin: Standin) -> None:
    with SshTransport("u@h:2200", _options()) as transport:
        with pytest.raises(RemoteError) as info:
            transport.run(["sh", "-c", "printf '1\\n2\\n\\n@@@@ banner\\n3\\n4\\n' >&2; exit 3"], what="the build")
        assert str(info.value) == "u@h:2200: the build failed with exit status 3: 2 | 3 | 4"
        with pytest.raises(RemoteError) as info:
            transport.run(["sh", "-c", "echo only stdout; exit 1"])
        assert str(info.value) == "u@h:2200: sh failed with exit status 1: only stdout"
    assert len(standin.connections()) == 2  # a command's failure is not retried


def test_a_command_that_runs_too_long_is_stopped_with_the_fix(
    standin: Standin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_SLEEP", "5")
    with SshTransport("h", _options()) as transport:
        with pytest.raises(RemoteError) as info:
            transport.run(["true"], timeout=0.6, what="timing")
    assert str(info.value) == (
        "h: timing did not finish within 1 s; the device may be overloaded or the link stalled. "
        "Re-run the same command: finished steps are kept."
    )
    assert len(standin.connections()) == 1


def test_refused_connections_are_retried_with_doubling_back_off(
    standin: Standin, caplog: pytest.LogCaptureFixture
) -> None:
    standin.fail("debug1: x\\nssh: connect to host h port 22: Connection refused\n", times=2)
    with caplog.at_level("WARNING", logger="edge_tl.deploy"):
        with SshTransport("h", _options(retries=2, backoff_s=0.5)) as transport:
            assert transport.run(["echo", "up"]).text == "up\n"
    assert len(standin.connections()) == 3 and standin.sleeps == [0.5, 1.0]
    assert [r.getMessage() for r in caplog.records] == [  # what `edge-tl deploy` shows while it waits
        f"h: unreachable (ssh: connect to host h port 22: Connection refused); retrying in {d} s"
        for d in ("0.5", "1.0")
    ]


def test_retries_give_up_with_the_count_and_ssh_message(standin: Standin) -> None:
    standin.fail("ssh: connect to host h port 22: Connection refused\n")
    with SshTransport("h", _options(retries=1, backoff_s=0.25)) as transport:
        with pytest.raises(RemoteError) as info:
            transport.run(["true"])
    assert str(info.value) == (
        "h: host unreachable after 2 attempt(s) (ssh: connect to host h port 22: Connection refused). "
        "Check that the device is on, on the network, and that sshd listens on that port."
    )
    assert len(standin.connections()) == 2 and standin.sleeps == [0.25]


def test_a_dropped_link_is_retried_and_then_reported_as_lost(standin: Standin) -> None:
    standin.fail("")
    with SshTransport("h", _options(retries=2, backoff_s=1.0)) as transport:
        with pytest.raises(RemoteError) as info:
            transport.run(["true"])
    assert str(info.value) == (
        "h: connection lost after 3 attempt(s) (ssh exit 255). "
        "Re-run the same command: a copy resumes where it stopped."
    )
    assert standin.sleeps == [1.0, 2.0]


@pytest.mark.parametrize("how", ["not idempotent", "streamed stdin"])
def test_what_cannot_be_repeated_is_tried_once(standin: Standin, how: str, tmp_path: Path) -> None:
    standin.fail("client_loop: send disconnect: Broken pipe\n")
    (tmp_path / "in").write_bytes(b"x")
    with SshTransport("h", _options(retries=3)) as transport, open(tmp_path / "in", "rb") as stream:
        with pytest.raises(
            RemoteError, match=r"^h: connection lost after 1 attempt\(s\) \(client_loop: send disconnect: Broken pipe\)"
        ):
            if how == "not idempotent":
                transport.run(["true"], idempotent=False)
            else:
                transport.run(["cat"], stdin=stream)
    assert len(standin.connections()) == 1 and standin.sleeps == []


def test_bytes_stdin_is_resent_on_a_retry(standin: Standin) -> None:
    standin.fail("Connection closed by 10.0.0.5 port 22\n", times=1)
    with SshTransport("h", _options()) as transport:
        assert transport.run(["cat"], stdin=b"again").stdout == b"again"
    assert len(standin.connections()) == 2


# --------------------------------------------------------------------------- ssh's own failures


@pytest.mark.parametrize(
    ("stderr", "failure"),
    [
        ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", "CHANGED_KEY"),
        ("Host key for h has changed and you have requested strict checking.", "CHANGED_KEY"),
        ("No ED25519 host key is known for h and you have requested strict checking.", "UNKNOWN_KEY"),
        ("Host key verification failed.", "UNKNOWN_KEY"),
        ("u@h: Permission denied (publickey).", "AUTH"),
        ("Received disconnect from h port 22:2: Too many authentication failures", "AUTH"),
        ("ssh: connect to host h port 22: Connection refused", "UNREACHABLE"),
        ("ssh: connect to host h port 22: Connection timed out", "UNREACHABLE"),
        ("ssh: connect to host h port 22: No route to host", "UNREACHABLE"),
        ("ssh: Could not resolve hostname h: Name or service not known", "UNREACHABLE"),
        ("ssh: connect to host h port 22: Network is unreachable", "UNREACHABLE"),
        ("kex_exchange_identification: read: Connection reset by peer", "UNREACHABLE"),
        ("banner\nConnection closed by 10.0.0.5 port 22", "UNREACHABLE"),
        ("Connection closed by 10.0.0.5 port 22\nlost connection", "UNREACHABLE"),
        ("Connection closed by 10.0.0.5 port 22 during the copy", "DROPPED"),
        ("client_loop: send disconnect: Broken pipe", "DROPPED"),
        ("", "DROPPED"),
    ],
)
def test_ssh_failures_are_told_apart(stderr: str, failure: str) -> None:
    assert ssh_module._classify(stderr) is ssh_module._Failure[failure]


def test_an_unknown_host_key_is_refused_at_once_with_the_fix(standin: Standin, tmp_path: Path) -> None:
    standin.fail(
        "No ED25519 host key is known for [127.0.0.1]:1 and you have requested strict checking.\\n"
        "Host key verification failed.\n"
    )
    known = tmp_path / "kh"
    with SshTransport("127.0.0.1:1", _options(known_hosts_file=known, connect_timeout_s=1)) as transport:
        with pytest.raises(RemoteError) as info:
            transport.run(["true"])
    assert str(info.value) == (
        f"127.0.0.1:1: host key is not in known_hosts ({known}): the device offers fingerprint unavailable "
        "(ssh-keyscan failed). Compare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` run on the device, "
        "then either "
        "connect once with `ssh` and accept it, or re-run with --accept-new-host-key (unknown keys are added; changed "
        "keys are still refused)."
    )
    assert len(standin.connections()) == 1 and not known.exists()
    assert "StrictHostKeyChecking=yes" in standin.connections()[0]


def test_a_changed_host_key_is_refused_with_the_offered_key_and_the_exact_forget_command(
    standin: Standin, tmp_path: Path
) -> None:
    standin.fail("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\\n"
                 "The fingerprint for the ED25519 key sent by the remote host is\\nSHA256:abc+/0=.\\n")  # fmt: skip
    config, known = tmp_path / "ssh config", tmp_path / "known hosts"
    config.write_text("Host dev\n  HostName 10.1.2.3\n  Port 2222\nHost plain\n  HostName 10.9.9.9\n")
    with SshTransport(
        "dev", _options(config_file=config, known_hosts_file=known, host_key_policy=HostKeyPolicy.ACCEPT_NEW)
    ) as t:
        with pytest.raises(RemoteError) as info:
            t.run(["true"])
    assert str(info.value) == (
        "dev: the host key CHANGED (device now offers SHA256:abc+/0=); "
        "this is refused even with --accept-new-host-key. "
        f"If the device was re-flashed, remove the old key with `ssh-keygen -R '[10.1.2.3]:2222' -f '{known}'` and "
        "connect again; otherwise someone may be intercepting the connection."
    )
    assert len(standin.connections()) == 1
    assert SshTransport("plain", _options(config_file=config)).forget_key_command() == "ssh-keygen -R 10.9.9.9"
    assert SshTransport("u@10.0.0.7:22", _options(config_file=config)).forget_key_command() == "ssh-keygen -R 10.0.0.7"
    standin.fail("REMOTE HOST IDENTIFICATION HAS CHANGED\n")
    with pytest.raises(RemoteError, match=r"now offers an unknown key\)"):
        SshTransport("plain", _options(config_file=config)).run(["true"])


def test_rejected_login_names_the_check_and_the_fix(standin: Standin) -> None:
    standin.fail("Warning: Permanently added 'h'.\\nu@h: Permission denied (publickey,password).\n")
    with pytest.raises(RemoteError) as info:
        SshTransport("u@h", _options()).run(["true"])
    assert str(info.value) == (
        "u@h: authentication failed (u@h: Permission denied (publickey,password).). Check the user and key: "
        "`ssh -o BatchMode=yes <host> true` must work without a password prompt (add the key with ssh-copy-id, "
        "or pass --identity-file)."
    )
    assert len(standin.connections()) == 1


def test_resolved_settings_follow_the_config_file(standin: Standin, tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    config.write_text("Host dev\n  HostName 10.1.2.3\n  Port 2222\n  User nvidia\n")
    resolved = SshTransport("dev", _options(config_file=config)).resolved()
    assert (resolved["hostname"], resolved["port"], resolved["user"]) == ("10.1.2.3", "2222", "nvidia")
    assert resolved["stricthostkeychecking"] == "true"  # the policy we pass, as ssh reads it
    # ssh-keyscan asks the resolved address and port (nobody listens here: no fingerprint, no hang).
    assert SshTransport("dev", _options(config_file=config, connect_timeout_s=1)).offered_fingerprints() == []


def test_tail_keeps_the_last_meaningful_lines() -> None:
    text = "\n first \n\n@@@@@@@@\nsecond\n  third  \n@@@ WARNING @@@\n"
    assert ssh_module._tail(text) == "first | second | third"
    assert ssh_module._tail(text, 1) == "third"
    assert ssh_module._tail(text, 2) == "second | third"
    assert ssh_module._tail("") == ""


def test_the_exit_tag_survives_a_command_that_prints_no_newline(standin: Standin) -> None:
    with SshTransport("h", _options()) as transport:
        result = transport.run(["sh", "-c", "printf partial >&2; exit 7"], check=False)
    assert (result.returncode, result.stderr) == (7, "partial")


def test_ssh_quote_escapes_percent_and_keeps_spaces() -> None:
    assert ssh_module._ssh_quote("/a b/100%") == '"/a b/100%%"'
    with pytest.raises(ConfigError, match="double quote"):
        ssh_module._ssh_quote('a"b')


def test_endpoint_strings_reach_ssh_only_after_the_option_end_marker(standin: Standin) -> None:
    argv = SshTransport("h", _options()).ssh_argv("cmd")
    assert argv.index("--") == len(argv) - 3 and argv[-2:] == ["h", "cmd"]


def test_socket_folder_skips_temp_dirs_that_do_not_fit_or_cannot_be_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # 40 characters: with the 13 of "/etl-xxxxxxxx" and the 58 of the socket name, 111 > 103.
    long = Path(tempfile.mkdtemp(prefix="z" * 27, dir="/tmp"))  # 8 random characters follow the prefix
    assert len(str(long)) == 40
    quoted = Path(tempfile.mkdtemp(prefix='q"', dir="/tmp"))
    try:
        for base in (long, quoted, Path("/tmp/etl-no-such-folder")):
            monkeypatch.setattr(tempfile, "tempdir", str(base))
            folder = ssh_module._control_dir()
            assert folder is not None and Path(folder).parent == Path("/tmp"), base
            os.rmdir(folder)
    finally:
        shutil.rmtree(long)
        shutil.rmtree(quoted)


def test_closing_says_nothing_on_the_terminal(standin: Standin, capfd: pytest.CaptureFixture[str]) -> None:
    with SshTransport("h", SshOptions()) as transport:
        transport.run(["true"])
    assert standin.calls()[-1][-4:] == ["-O", "exit", "--", "h"]
    assert capfd.readouterr() == ("", "")  # ssh's "Exit request sent." is not shown


def test_connection_errors_quote_only_the_last_line_of_ssh(standin: Standin) -> None:
    standin.fail("debug: trying\\nssh: connect to host h port 22: Connection refused\n")
    with pytest.raises(
        RemoteError, match=r"attempt\(s\) \(ssh: connect to host h port 22: Connection refused\)\. Check"
    ):
        SshTransport("h", _options(retries=0)).run(["true"])
    standin.fail("Warning: something\\nclient_loop: send disconnect: Broken pipe\n")
    with pytest.raises(RemoteError, match=r"attempt\(s\) \(client_loop: send disconnect: Broken pipe\)\. Re-run"):
        SshTransport("h", _options(retries=0)).run(["true"])


def test_unknown_key_message_without_a_known_hosts_option_names_no_file(standin: Standin) -> None:
    standin.fail("Host key verification failed.\n")
    with pytest.raises(RemoteError) as info:
        SshTransport("127.0.0.1:1", _options(connect_timeout_s=1)).run(["true"])
    assert str(info.value).startswith("127.0.0.1:1: host key is not in known_hosts: the device offers ")


def test_forget_command_falls_back_to_the_endpoint_when_ssh_cannot_read_the_config(
    standin: Standin, tmp_path: Path
) -> None:
    broken = tmp_path / "cfg"
    broken.write_text("Bogus nonsense\n")  # ssh -G refuses this file: nothing resolved
    assert SshTransport("u@h:2200", _options(config_file=broken)).resolved() == {}
    assert SshTransport("u@h:2200", _options(config_file=broken)).forget_key_command() == "ssh-keygen -R '[h]:2200'"
    assert SshTransport("h", _options(config_file=broken)).forget_key_command() == "ssh-keygen -R h"
    assert SshTransport("h:22", _options(config_file=broken)).forget_key_command() == "ssh-keygen -R h"


def test_resolved_values_keep_their_spaces(standin: Standin, tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    config.write_text("Host dev\n  HostName 10.1.2.3\n  ProxyCommand nc %h %p\n")
    assert SshTransport("dev", _options(config_file=config)).resolved()["proxycommand"] == "nc %h %p"


_KEYSCAN = r"""#!/bin/sh
printf '%s\n' "$@" > "$KEYSCAN_LOG"
cat "$KEYSCAN_KEYS"
"""


def test_offered_fingerprints_are_asked_of_the_resolved_address_and_read_with_ssh_keygen(
    standin: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    keys, fingerprints = [], []
    for name in ("k1", "k2"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
        keys.append("10.1.2.3 " + " ".join((tmp_path / f"{name}.pub").read_text().split()[:2]))
        out = subprocess.run(
            ["ssh-keygen", "-lf", str(tmp_path / f"{name}.pub")], capture_output=True, text=True, check=True
        )
        fingerprints.append(out.stdout.split()[1])
    (tmp_path / "keys").write_text("# 10.1.2.3:2222 SSH-2.0-OpenSSH\n" + "\n".join(keys) + "\n")
    keyscan = standin.bin / "ssh-keyscan"
    keyscan.write_text(_KEYSCAN)
    keyscan.chmod(0o755)
    monkeypatch.setenv("KEYSCAN_LOG", str(tmp_path / "keyscan-args"))
    monkeypatch.setenv("KEYSCAN_KEYS", str(tmp_path / "keys"))
    config = tmp_path / "cfg"
    config.write_text("Host dev\n  HostName 10.1.2.3\n  Port 2222\n")
    transport = SshTransport("dev", _options(config_file=config, connect_timeout_s=3))
    offered = [f"{fingerprints[0]} (ED25519)", f"{fingerprints[1]} (ED25519)"]
    assert transport.offered_fingerprints() == offered
    assert (tmp_path / "keyscan-args").read_text().split("\n")[:-1] == ["-T", "3", "-p", "2222", "10.1.2.3"]
    standin.fail("Host key verification failed.\n")
    with pytest.raises(RemoteError) as info:
        transport.run(["true"])
    assert f"the device offers {offered[0]}, {offered[1]}. Compare it" in str(info.value)
    # Without ssh-keyscan, or without ssh-keygen, there is nothing to show (and no crash).
    monkeypatch.setenv("PATH", str(standin.bin))
    keyscan.unlink()
    assert transport.offered_fingerprints() == []


def test_no_fingerprints_without_a_resolved_host_or_with_a_tool_missing(
    standin: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyscan = standin.bin / "ssh-keyscan"
    keyscan.write_text(_KEYSCAN)
    keyscan.chmod(0o755)
    (tmp_path / "keys").write_text("")
    monkeypatch.setenv("KEYSCAN_LOG", str(tmp_path / "keyscan-args"))
    monkeypatch.setenv("KEYSCAN_KEYS", str(tmp_path / "keys"))
    broken = tmp_path / "cfg"
    broken.write_text("Bogus nonsense\n")  # ssh -G fails: no address to scan
    assert SshTransport("h", _options(config_file=broken)).offered_fingerprints() == []
    assert not (tmp_path / "keyscan-args").exists()  # nothing was scanned
    # ssh-keyscan there, ssh-keygen not: nothing to read the keys with.
    monkeypatch.setenv("PATH", str(standin.bin))
    for tool in ("sh", "cat", "printf"):
        if shutil.which(tool, path=os.environ["PATH"]) is None:
            (standin.bin / tool).symlink_to(shutil.which(tool, path=os.defpath) or f"/bin/{tool}")
    monkeypatch.setenv("REAL_SSH", REAL_SSH)
    transport = SshTransport("h", _options())
    assert transport.resolved()["hostname"] == "h"
    assert transport.offered_fingerprints() == [] and not (tmp_path / "keyscan-args").exists()


def test_without_a_short_socket_folder_each_command_connects_alone_and_says_why(
    standin: Standin, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="edge_tl.deploy"):
        with SshTransport("h", SshOptions()) as transport:
            assert transport.run(["echo", "shared"]).text == "shared\n"
        assert caplog.records == []  # a shared connection is nothing to mention
        monkeypatch.setattr(ssh_module, "_control_dir", lambda: None)
        with SshTransport("h", SshOptions()) as transport:
            assert "ControlMaster=auto" not in transport.ssh_argv("true")
    assert [r.getMessage() for r in caplog.records] == [
        "no temporary folder short enough for ssh's control socket: one connection per command"
    ]


def test_close_copes_with_a_socket_folder_already_cleaned_away(standin: Standin) -> None:
    transport = SshTransport("h", SshOptions()).__enter__()
    shutil.rmtree(transport._control_dir)  # e.g. a tmp cleaner ran during a long deploy
    transport.close()
    assert transport._control_dir is None


def test_a_remote_command_exiting_255_is_its_status_not_a_lost_connection(standin: Standin) -> None:
    with SshTransport("h", _options(retries=2)) as transport:
        result = transport.run(["sh", "-c", "echo err >&2; exit 255"], check=False)
    assert (result.returncode, result.stderr) == (255, "err\n")
    assert len(standin.connections()) == 1 and standin.sleeps == []


def test_a_remote_that_ends_without_reporting_its_status_gives_sshs_exit_status(standin: Standin, monkeypatch) -> None:
    monkeypatch.setenv("STANDIN_EXIT", "5")
    with SshTransport("h", _options()) as transport:
        result = transport.run(["true"], check=False)
        assert (result.returncode, result.stderr) == (5, "fish: Unsupported use of '='.\n")
        with pytest.raises(RemoteError, match=r"^h: true failed with exit status 5: fish: Unsupported use of '='\.$"):
            transport.run(["true"])


def test_stderr_that_is_not_utf8_is_shown_not_a_crash(standin: Standin) -> None:
    with SshTransport("h", _options()) as transport:
        result = transport.run(["sh", "-c", "printf 'caf\\351\\n' >&2"], check=False)
    assert result.stderr == "caf\ufffd\n"


def test_without_stdin_the_remote_command_never_reads_ours(standin: Standin) -> None:
    read, write = os.pipe()
    os.write(write, b"typed at the terminal")
    os.close(write)
    saved = os.dup(0)
    os.dup2(read, 0)
    try:
        with SshTransport("h", _options()) as transport:
            out = transport.run(["cat"]).stdout
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read)
    assert out == b""


def test_a_parsed_endpoint_is_used_as_given(standin: Standin) -> None:
    endpoint = SshEndpoint("10.0.0.5", user="nvidia", port=2200)
    assert SshTransport(endpoint, _options()).endpoint is endpoint
    assert SshTransport("nvidia@10.0.0.5:2200", _options()).endpoint == endpoint
