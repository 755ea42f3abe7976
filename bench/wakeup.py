"""How long this machine takes to pass a message between two processes after a quiet spell.

A pinned echo server on CPU 0 and a client on CPU 1 exchange one byte over loopback TCP, first
back to back, then after 0.5, 2 and 5 seconds of quiet. On a busy proxy nothing is ever quiet;
in `bench/proxy.py` every round starts after one (the other side's round), so the first burst of
a round pays what this shows (docs/benchmarks.md, issue #18).

    python bench/wakeup.py
"""

from __future__ import annotations

import os
import socket
import statistics
import time


def main() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the echo server
        os.sched_setaffinity(0, {0})
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(64):
            conn.sendall(data)
        os._exit(0)
    os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print("quiet before | first round trip ms (3 tries) | median of the next 7")
    for quiet in (0.0, 0.5, 2.0, 5.0):
        firsts, rest = [], []
        for _ in range(3):
            time.sleep(quiet)
            trips = []
            for _ in range(8):
                started = time.perf_counter()
                client.sendall(b"x")
                client.recv(64)
                trips.append((time.perf_counter() - started) * 1000)
            firsts.append(trips[0])
            rest.extend(trips[1:])
        print(f"{quiet:>10.1f} s | {' '.join(f'{t:6.3f}' for t in firsts)} | {statistics.median(rest):.3f}")
    client.close()
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
