"""STAND-IN for NVIDIA's tegrastats, for the deploy tests (no Jetson here).

``--interval MS --logfile F --start`` starts a background writer of tegrastats-style lines
(JetPack 6 layout; the values are illustrative, alternating VDD_IN between 5000 and 7000 mW);
``--stop`` stops it, as the real tool does.
"""

import os
import signal
import subprocess
import sys
import time

PID_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tegrastats.pid")
LINE = (
    "11-27-2026 19:00:00 RAM 2344/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@729,1%@729,off,off] "
    "EMC_FREQ 0% GR3D_FREQ 0% cpu@45.5C soc2@44.3C gpu@{gpu}C tj@47.5C VDD_IN {vin}mW/{vin}mW "
    "VDD_CPU_GPU_CV 480mW/480mW VDD_SOC 1443mW/1443mW"
)


def loop(logfile: str, interval_s: float) -> None:
    n = 0
    while True:
        with open(logfile, "a") as fh:
            fh.write(LINE.format(vin=5000 if n % 2 == 0 else 7000, gpu="44.9" if n % 2 == 0 else "46.0") + "\n")
        n += 1
        time.sleep(interval_s)


def main(argv):
    opts = dict(zip(argv[::2], argv[1::2])) if "--start" not in argv and "--stop" not in argv else {}
    if "--stop" in argv:
        try:
            with open(PID_FILE) as fh:
                os.kill(int(fh.read()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        return
    if "--start" in argv:
        rest = [a for a in argv if a != "--start"]
        opts = dict(zip(rest[::2], rest[1::2]))
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--loop", opts["--logfile"], opts.get("--interval", "1000")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        with open(PID_FILE, "w") as fh:
            fh.write(str(child.pid))
        return
    if argv[:1] == ["--loop"]:
        loop(argv[1], int(argv[2]) / 1000.0)
        return
    raise SystemExit(f"stand-in tegrastats: unsupported arguments {argv} {opts}")


if __name__ == "__main__":
    main(sys.argv[1:])
