"""Strict third-party HTTP stacks against a running kestra-edge (python h11 and h2).

    python3 scripts/real_tools.py HOST PORT

h11 (a strict HTTP/1.1 implementation) reads the gateway's answers, including a chunked
stream and the gateway's own 4xx, and must find each well framed; h2 checks that an
oversized header block is answered 431 and that a burst of reset streams does not take the
connection down.
"""
import socket
import sys

import h11
import h2.config
import h2.connection
import h2.events

HOST, PORT = sys.argv[1], int(sys.argv[2])
failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    if not ok:
        failures.append(name)


def h11_exchange(target, headers=(), body=b""):
    conn = h11.Connection(h11.CLIENT)
    sock = socket.create_connection((HOST, PORT), timeout=10)
    hdrs = [("Host", "kestra.test"), ("Connection", "close"), *headers]
    if body:
        hdrs.append(("Content-Length", str(len(body))))
    data = conn.send(h11.Request(method="POST" if body else "GET", target=target, headers=hdrs))
    if body:
        data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    sock.sendall(data)
    status, received = None, 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            received += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            break
    sock.close()
    return status, received


for name, target, expected, length in [
    ("h11 ping", "/kestra/ping", 200, 4),
    ("h11 1 MiB chunked download", "/kestra/api/v1/download?bytes=1048576", 200, 1048576),
    ("h11 SSE stream to its end", "/kestra/api/v1/main/executions/e/follow?events=3&interval_ms=10", 200, None),
    ("h11 404 outside the context path", "/elsewhere", 404, None),
    ("h11 400 for a dot-dot path", "/kestra/%2e%2e/etc/passwd", 400, None),
    ("h11 414 for a 20 KiB target", "/kestra/" + "a" * 20480, 414, None),
]:
    try:
        status, received = h11_exchange(target)
        check(name, status == expected and (length is None or received == length),
              f"status {status}, {received} body bytes")
    except Exception as err:  # noqa: BLE001 - any protocol error is a failure
        check(name, False, repr(err))

try:
    status, _ = h11_exchange("/kestra/api/v1/upload", body=b"x" * (2 << 20))
    check("h11 413 for a body over --max-body", status == 413, f"status {status}")
except Exception as err:  # noqa: BLE001
    check("h11 413 for a body over --max-body", False, repr(err))


def h2_connection():
    sock = socket.create_connection((HOST, PORT), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def h2_status(sock, conn, stream_id):
    while True:
        data = sock.recv(65536)
        if not data:
            return None
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                return int(dict(event.headers)[b":status"])
            if isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                return f"reset {event.error_code}"
        sock.sendall(conn.data_to_send())


def h2_get(sock, conn, path, extra=()):
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                  (":authority", "kestra.test"), *extra], end_stream=True)
    sock.sendall(conn.data_to_send())
    return stream_id


sock, conn = h2_connection()
check("h2 GET", h2_status(sock, conn, h2_get(sock, conn, "/kestra/ping")) == 200)
big = h2_get(sock, conn, "/kestra/ping", [("x-big", "v" * (70 * 1024))])
status = h2_status(sock, conn, big)
check("h2 431 for a 70 KiB header block", status == 431, f"status {status}")
sock.close()

sock, conn = h2_connection()
sent = 0
try:
    for _ in range(200):
        stream_id = h2_get(sock, conn, "/kestra/api/v1/main/executions/e/follow?events=0")
        conn.reset_stream(stream_id)
        sock.sendall(conn.data_to_send())
        sent += 1
    status = h2_status(sock, conn, h2_get(sock, conn, "/kestra/ping"))
except Exception as err:  # noqa: BLE001 - the server ends an abusive connection
    status = f"closed by the server after {sent} streams ({type(err).__name__})"
print(f"     after opening and resetting streams in a loop, that connection: {status}")
sock.close()
sock, conn = h2_connection()
status = h2_status(sock, conn, h2_get(sock, conn, "/kestra/ping"))
check("h2 a new connection is served after a rapid-reset burst", status == 200, f"status {status}")
sock.close()

print(f"{len(failures)} failed")
sys.exit(1 if failures else 0)
