"""A TCP relay in front of the fake API server that can freeze or die, for fault tests.

The fake cluster runs in the test's own process, so ``kill -STOP`` cannot pause it alone. The
relay does the same from the client's side: :meth:`FaultProxy.freeze` keeps accepting
connections and reading requests but forwards nothing, either way (a stopped process whose
kernel still completes handshakes); :meth:`FaultProxy.thaw` lets the held bytes through;
:meth:`FaultProxy.kill` closes the listening socket and every connection (a dead server:
refused from then on). Every thread it starts ends at :meth:`FaultProxy.stop`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit

_POLL_S = 0.05


class FaultProxy:
    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(_POLL_S)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._dead = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self.held = 0  # chunks that waited while frozen
        self._start(self._accept, "fault-proxy-accept")

    def _start(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    # -- faults ---------------------------------------------------------------------------

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def kill(self) -> None:
        """Die: no new connection is accepted (refused), every open one is cut."""
        self._dead.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def stop(self) -> None:
        self._closed.set()
        self._flowing.set()
        self.kill()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- relay ----------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set() and not self._dead.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(_POLL_S)
            with self._lock:
                self._sockets += [client, upstream]
                self.connections += 1
            self._start(self._pump, "fault-proxy-up", client, upstream)
            self._start(self._pump, "fault-proxy-down", upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                if not self._flowing.is_set():
                    self.held += 1
                while not self._flowing.wait(_POLL_S):
                    if self._closed.is_set() or self._dead.is_set():
                        return
                view = memoryview(data)
                while view:
                    try:
                        view = view[dst.send(view) :]
                    except TimeoutError:
                        if self._closed.is_set():
                            return
                    except OSError:
                        return
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
