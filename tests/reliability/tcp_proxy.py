"""A small TCP proxy a test can cut and restore, to take a shared service away from the code
under test without touching the service itself."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

CHUNK = 65536


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``. ``cut()`` drops every open connection and
    refuses new ones (they are accepted and closed at once, as a dead server would look);
    ``hang()`` drops every open connection and holds new ones open without ever answering (a
    server that accepts and then says nothing); ``restore()`` forwards again. With
    ``bytes_per_s`` set (it may change at any time) each direction of each connection is held to
    that rate, so a transfer stays in flight long enough to be cut in the middle."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.bytes_per_s: float | None = None
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._hang = False
        self._held: list[socket.socket] = []
        self._closed = False
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            doomed = list(self._open)
            self._open.clear()
        for sock in doomed:
            _hard_close(sock)

    def hang(self) -> None:
        self.cut()
        with self._lock:
            self._cut, self._hang = False, True

    def restore(self) -> None:
        with self._lock:
            self._cut = self._hang = False
            held, self._held = self._held, []
        for sock in held:
            _hard_close(sock)

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.restore()  # closes the held connections
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            with self._lock:
                refused, hanging = self._cut, self._hang
                if hanging:
                    self._held.append(client)
            if hanging:
                continue
            if refused:
                _hard_close(client)
                continue
            try:
                server = socket.create_connection(self._upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _hard_close(client)
                continue
            with self._lock:
                self._open.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                sink.sendall(data)
                if self.bytes_per_s:
                    time.sleep(len(data) / self.bytes_per_s)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            _hard_close(source)
            _hard_close(sink)


def _hard_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
