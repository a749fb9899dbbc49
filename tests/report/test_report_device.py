"""The device section and the fleet page, from a real fleet deploy to loopback sshd devices.

One device runs the deploy tests' STAND-IN trtexec (it replays a real Xavier trtexec log and
computes real logits with ONNX Runtime) and STAND-IN tegrastats; a second device is down.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser_check import assert_renders_cleanly, assert_self_contained, check_in_chromium
from markupsafe import escape
from staging import cli, deploy_fixtures

pytestmark = pytest.mark.ssh

REPO = Path(__file__).resolve().parents[2]


def test_fleet_deploy_gives_a_device_section_and_a_fleet_page(run_copy: Path, ssh_lab, tmp_path: Path) -> None:
    from edge_tl.cli.main import main

    device = ssh_lab.start()
    down = ssh_lab.start()
    down.stop()
    try:
        deploy_fixtures.install_standin_trtexec(
            device, REPO / "tests" / "compile" / "fixtures" / "trtexec-8.4-jetson-agx-xavier.log"
        )
        deploy_fixtures.install_standin_tegrastats(device)
        inventory = tmp_path / "fleet.toml"
        inventory.write_text(
            f'[defaults]\ntarget = "{deploy_fixtures.standin_xavier_profile(tmp_path)}"\n'
            'precision = "fp32"\nmode = "trtexec"\ncheck_device = false\n'
            "eval_images = 64\niterations = 20\nwarmup = 2\n\n"
            f'[[device]]\nname = "xavier-1"\nhost = "{device.alias}"\nremote_dir = "{tmp_path}/remote1"\n\n'
            f'[[device]]\nname = "down-1"\nhost = "{down.alias}"\nremote_dir = "{tmp_path}/remote2"\n'
        )
        cli("report", run_copy)
        with pytest.raises(SystemExit) as exit_info:
            main(["deploy", str(run_copy), "--fleet", str(inventory), "--ssh-config", str(ssh_lab.client_config),
                  "--retries", "0", "--quiet"])  # fmt: skip
    finally:
        device.stop()
    assert exit_info.value.code == 1  # one device failed

    # The deploy refreshed the existing report by itself: device section and fleet page are there.
    report = run_copy / "report"
    fleet_page, index = report / "fleet.html", report / "index.html"
    assert fleet_page.is_file()
    entry = json.loads((run_copy / "deploy" / "xavier-1" / "accuracy.json").read_text())["results"][0]
    fleet = json.loads((run_copy / "deploy" / "fleet.json").read_text())
    reason = next(d["reason"] for d in fleet["devices"] if d["label"] == "down-1")

    html = index.read_text()
    assert_self_contained(html)
    assert 'id="device-xavier-1"' in html and 'id="device-down-1"' not in html
    assert 'href="fleet.html"' in html
    section = html[html.index('id="device-xavier-1"') :]
    probe = json.loads((run_copy / "deploy" / "xavier-1" / "probe.json").read_text())
    assert f"<dt>arch / kernel</dt><dd>{probe['arch']} / {probe['kernel']}</dd>" in section
    assert "<dt>clocks locked</dt><dd>no</dd>" in section  # --lock-clocks was not given
    # Latency as measured on the device, energy from tegrastats, accuracy against the original there.
    assert f'<td>as measured</td><td class="num">{entry["latency_ms"]["p50"]:.3f}</td>' in section
    assert f"mean power {entry['power_mean_mw']:.0f} mW" in section
    assert (
        f"on the same {entry['num_images']} evaluation images: original {entry['reference_top1'] * 100:.2f}%" in section
    )
    assert f'data-artifact="{entry["artifact"]}"' in section

    fleet_html = fleet_page.read_text()
    assert_self_contained(fleet_html)
    seen, rows = check_in_chromium(fleet_page, table="fleet-table")
    assert rows == ["xavier-1", "down-1"]
    assert_renders_cleanly(seen, min_images=1)
    assert "1 of 2 device(s) deployed and measured" in fleet_html
    failed_row = fleet_html[fleet_html.index('data-device="down-1"') :]
    assert "failed" in failed_row and "unreachable" in reason and str(escape(reason)) in failed_row

    seen, rows = check_in_chromium(index, table="artifact-table")
    assert_renders_cleanly(
        seen, min_images=4
    )  # curves, confusion, accuracy-latency here, accuracy-latency on the device
