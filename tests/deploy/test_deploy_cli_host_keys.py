"""`edge-tl deploy`'s host-key default, in process against a loopback sshd whose key nobody trusts yet:
refused (and nothing written to known_hosts) unless --accept-new-host-key is given. Fast: an
untrained run (no training) and a device folder edge-tl did not make, which stops the deploy right
after the connection."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge_tl.cli.main import main

pytestmark = pytest.mark.ssh


def _cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    return info.value.code, captured.out + captured.err


def test_deploy_refuses_an_unknown_host_key_unless_asked(untrained_run: Path, ssh_lab, tmp_path: Path, capsys) -> None:
    run = Path(shutil.copytree(untrained_run, tmp_path / "run"))
    server = ssh_lab.start(trust=False)
    try:
        known = tmp_path / "known_hosts"
        known.write_text("")
        foreign = tmp_path / "theirs"
        foreign.mkdir()
        (foreign / "data.txt").write_text("theirs")
        base = [
            "deploy",
            str(run),
            "--host",
            server.alias,
            "--target",
            "x86-64",
            "--precision",
            "fp32",
            "--ssh-config",
            str(ssh_lab.client_config),
            "--known-hosts",
            str(known),
            "--remote-dir",
            str(foreign),
            "--wheel",
            __file__,
            "--retries",
            "0",
            "--connect-timeout",
            "7",
            "--eval-images",
            "8",
            "--quiet",
        ]
        code, printed = _cli(capsys, *base)
        assert code == 1 and f"{server.alias}: host key is not in known_hosts ({known})" in printed
        assert known.read_text() == ""  # by default nothing is trusted on first sight
        code, printed = _cli(capsys, *base, "--accept-new-host-key")
        assert code == 1 and "edge-tl did not make it" in printed  # connected: the key was accepted ...
        assert f"[127.0.0.1]:{server.port}" in known.read_text()  # ... and recorded in the file asked for
        assert (foreign / "data.txt").read_text() == "theirs" and sorted(p.name for p in foreign.iterdir()) == [
            "data.txt"
        ]
    finally:
        server.stop()


def test_deploy_flags_become_the_ssh_settings(tmp_path: Path) -> None:
    from edge_tl.cli.deploy import ssh_options
    from edge_tl.deploy import HostKeyPolicy

    config, key = tmp_path / "cfg", tmp_path / "key"
    config.write_text("")
    key.write_text("")
    common = dict(ssh_config=config, identity_file=key, known_hosts=tmp_path / "kh", connect_timeout=7, retries=4)
    strict = ssh_options(accept_new_host_key=False, **common)
    assert strict.host_key_policy is HostKeyPolicy.STRICT
    assert (strict.config_file, strict.identity_file, strict.known_hosts_file) == (config, key, tmp_path / "kh")
    assert (strict.connect_timeout_s, strict.retries) == (7, 4)
    assert ssh_options(accept_new_host_key=True, **common).host_key_policy is HostKeyPolicy.ACCEPT_NEW
