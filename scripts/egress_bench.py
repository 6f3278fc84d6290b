"""CONNECT tunnel throughput and new-tunnel rate through a forward proxy (kestra-edge's egress
listener or squid), measured by one client for both. Used by scripts/egress-bench.sh.

  python3 egress_bench.py throughput PROXY_HOST PROXY_PORT DEST_PORT SECONDS STREAMS
  python3 egress_bench.py tunnels    PROXY_HOST PROXY_PORT DEST_PORT SECONDS CONCURRENCY

The destination (`serve`) answers each connection: a first byte `t` starts an endless stream of
64 KiB chunks (throughput), `e` echoes one byte back and waits for the close (new tunnels).
Prints one JSON line.
"""
import asyncio
import json
import socket
import sys
import time

CHUNK = b"\0" * 65536


async def serve(port):
    async def handle(reader, writer):
        try:
            first = await reader.readexactly(1)
            if first == b"t":
                while True:
                    writer.write(CHUNK)
                    await writer.drain()
            else:
                writer.write(first)
                await writer.drain()
                await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def open_tunnel(proxy_host, proxy_port, dest_port):
    reader, writer = await asyncio.open_connection(proxy_host, proxy_port)
    target = f"127.0.0.1:{dest_port}"
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    if status != 200:
        raise RuntimeError(f"CONNECT answered {status}")
    return reader, writer


async def throughput(proxy_host, proxy_port, dest_port, seconds, streams):
    total = 0

    async def one():
        nonlocal total
        reader, writer = await open_tunnel(proxy_host, proxy_port, dest_port)
        writer.write(b"t")
        await writer.drain()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            data = await reader.read(1 << 20)
            if not data:
                break
            total += len(data)
        writer.close()

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(streams)))
    elapsed = time.monotonic() - start
    return {"mib_per_s": round(total / elapsed / (1 << 20), 1), "streams": streams}


async def tunnels(proxy_host, proxy_port, dest_port, seconds, concurrency):
    done = 0
    errors = 0
    latencies = []

    async def worker(end):
        nonlocal done, errors
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                reader, writer = await open_tunnel(proxy_host, proxy_port, dest_port)
                writer.write(b"e")
                await writer.drain()
                await reader.readexactly(1)
                writer.close()
                await writer.wait_closed()
                done += 1
                latencies.append(time.monotonic() - t0)
            except (OSError, RuntimeError, asyncio.IncompleteReadError):
                errors += 1

    start = time.monotonic()
    end = start + seconds
    await asyncio.gather(*(worker(end) for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else None
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None
    return {
        "tunnels_per_s": round(done / elapsed),
        "errors": errors,
        "p50_ms": p50 and round(p50, 2),
        "p99_ms": p99 and round(p99, 2),
        "concurrency": concurrency,
    }


def main():
    mode = sys.argv[1]
    if mode == "serve":
        asyncio.run(serve(int(sys.argv[2])))
        return
    host, port, dest, seconds, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    run = throughput if mode == "throughput" else tunnels
    print(json.dumps(asyncio.run(run(host, port, dest, seconds, n))))


if __name__ == "__main__":
    main()
