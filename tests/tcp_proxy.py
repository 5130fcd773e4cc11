"""A TCP proxy (on 127.0.0.1 unless told otherwise) the tests can cut: a database that restarts or
stops answering."""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    """Forwards ``listen_host``:<port> (127.0.0.1 by default) to ``target``. ``cut()`` drops every
    connection and refuses new ones (as a restarting database does) until ``restore()``."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server((listen_host, 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.connections: list[socket.socket] = []
        self.refusing = False
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.refusing:
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def cut(self) -> None:
        with self.lock:
            self.refusing = True
            connections, self.connections = self.connections, []
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def restore(self) -> None:
        with self.lock:
            self.refusing = False

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()
