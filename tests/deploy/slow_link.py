"""A ProxyCommand that relays ssh traffic to 127.0.0.1:PORT over a link the test controls.

Usage (ssh_config): ``ProxyCommand python3 slow_link.py PORT CONTROL_DIR``. In CONTROL_DIR:
``rate`` holds bytes/second for client->server traffic (absent: unthrottled); while a
file ``down`` exists the link is cut: new connections fail and live ones are dropped
abruptly, as when a Wi-Fi link to a device goes away mid-copy; ``drop-once`` holding N
cuts one connection after it carried N bytes upstream (the file is then removed).
"""

import os
import socket
import sys
import threading
import time

port, control = int(sys.argv[1]), sys.argv[2]
down = os.path.join(control, "down")
if os.path.exists(down):
    sys.exit(1)
sock = socket.create_connection(("127.0.0.1", port))


def cut() -> None:
    os._exit(1)  # no FIN handshake niceties: the link is simply gone


def upstream() -> None:
    carried = 0
    once = os.path.join(control, "drop-once")
    while True:
        data = os.read(0, 16384)
        if not data:
            sock.shutdown(socket.SHUT_WR)
            return
        if os.path.exists(down):
            cut()
        carried += len(data)
        try:
            with open(once) as fh:
                limit = int(fh.read())
            if carried > limit:
                os.unlink(once)
                cut()
        except (OSError, ValueError):
            pass
        sock.sendall(data)
        try:
            with open(os.path.join(control, "rate")) as fh:
                time.sleep(len(data) / float(fh.read()))
        except (OSError, ValueError):
            pass


def downstream() -> None:
    while True:
        data = sock.recv(65536)
        if not data:
            os._exit(0)
        if os.path.exists(down):
            cut()
        view = memoryview(data)
        while view:
            view = view[os.write(1, view) :]


threading.Thread(target=upstream, daemon=True).start()
downstream()
