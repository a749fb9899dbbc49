"""`edge-tl ship --fleet` with a device switched off: pre-flight lists it, the others are shipped to,
the table and the report name it with its reason, and ship exits 1 (as `deploy --fleet` does)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from shiplab import run_ship, stage_records, write_digits

pytestmark = pytest.mark.ssh


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens there


def _inventory(path: Path, sshd, remote: Path, down_port: int) -> Path:
    path.write_text(
        f'[[device]]\nname = "devup"\nhost = "{sshd.alias}"\nremote_dir = "{remote}"\n\n'
        f'[[device]]\nname = "devdown"\nhost = "127.0.0.1:{down_port}"\n'
    )
    return path


def test_require_all_devices_refuses_in_pre_flight_and_an_all_down_fleet_is_refused(sshd, ssh_lab, tmp_path):
    pytest.importorskip("sklearn")
    images = write_digits(tmp_path / "images", classes=(0, 1), per_class=6)
    port = _closed_port()
    fleet = _inventory(tmp_path / "fleet.toml", sshd, tmp_path / "device", port)
    base = ["--data", images, "--target", "x86-64", "--fleet", fleet, "--ssh-config", ssh_lab.client_config,
            "--epochs", "1", "--img-size", "32", "--out", tmp_path / "run"]  # fmt: skip
    done = run_ship(*base, "--require-all-devices", timeout=120)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "--require-all-devices, and 1 of 2 device(s) cannot be reached: devdown:" in lines[0]
    assert "unreachable" in lines[0] and "devup" not in lines[0] and not (tmp_path / "run").exists()
    alone = tmp_path / "down.toml"
    alone.write_text(f'[[device]]\nname = "devdown"\nhost = "127.0.0.1:{port}"\n')
    done = run_ship(*[alone if a == fleet else a for a in base], timeout=120)
    assert done.returncode == 1 and "every device is down 1 of 1 device(s)" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_fleet_with_one_device_down_ships_to_the_others_and_exits_1(shipped, run_copy, sshd, ssh_lab, tmp_path):
    fleet = _inventory(tmp_path / "fleet.toml", sshd, tmp_path / "fleet-device", _closed_port())
    args = list(shipped.args)
    at = args.index("--host")
    args[at : at + 2] = ["--fleet", str(fleet)]
    done = run_ship(*args, "--out", run_copy, "--retries", "0")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "warning: fleet device devdown is down" in done.stderr and "shipping to the other 1" in done.stderr
    table = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "incomplete" in table["deploy"] and "devup: p50" in table["deploy"]
    assert "devdown: MISSING (" in table["deploy"] and "unreachable" in table["deploy"]
    assert table["verify"].split()[1] == "ran" and table["report"].split()[1] == "ran"  # the rest went on
    assert "1 of 2 device(s) failed (see the table): devdown" in done.stderr
    fleet_json = json.loads((run_copy / "deploy" / "fleet.json").read_text())
    assert [(d["label"], d["status"]) for d in fleet_json["devices"]] == [("devup", "ok"), ("devdown", "failed")]
    page = (run_copy / "report" / "fleet.html").read_text()
    assert "devdown" in page and "unreachable" in page
    records = stage_records(run_copy)
    assert records["deploy"]["incomplete"] is True and records["verify"]["status"] == "done"
