"""The benchmarks' load generator: a lean HTTP/1.1 keep-alive client in its own process.

It runs apart from the hub-side process so that the client's own CPU does not count as the
tunnel's. Prints one JSON object.

    python -m benchmarks.load_client download HOST:PORT SIZE
    python -m benchmarks.load_client latency HOST:PORT REQUESTS CONNECTIONS
    python -m benchmarks.load_client pageload HOST:PORT CONNECTIONS PATH_FILE
    python -m benchmarks.load_client ranges HOST:PORT SIZE PARTS

``pageload`` fetches every path listed in PATH_FILE (one a line) over CONNECTIONS kept-alive
connections, each taking the next path when it is done, as a browser loads a page's assets
(browsers open at most 6 connections per host). ``ranges`` downloads one SIZE-byte file as
PARTS ``Range`` requests in parallel, as download managers (and ``aws s3 cp``) do.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, headers: str = ""
) -> int:
    """One GET on a kept-alive connection; returns the body length (body read and dropped)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    remaining = length
    while remaining:
        chunk = await reader.read(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed mid-body")
        remaining -= len(chunk)
    return length


async def download(address: str, size: int) -> dict[str, float]:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 22)
    started = time.perf_counter()
    received = await _request(reader, writer, f"/blob?size={size}&seed=1")
    seconds = time.perf_counter() - started
    writer.close()
    return {"bytes": received, "seconds": seconds, "mb_per_s": received / seconds / 1e6}


async def latency(address: str, requests: int, connections: int) -> dict[str, float]:
    host, port = address.rsplit(":", 1)
    samples: list[float] = []

    async def worker(n: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        await _request(reader, writer, "/small")  # warm-up, not counted
        for _ in range(n):
            started = time.perf_counter()
            await _request(reader, writer, "/small")
            samples.append(time.perf_counter() - started)
        writer.close()

    per = requests // connections
    await asyncio.gather(*(worker(per) for _ in range(connections)))
    samples.sort()
    return {
        "requests": len(samples),
        "p50_ms": samples[len(samples) // 2] * 1e3,
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3,
    }


async def pageload(address: str, connections: int, paths: list[str]) -> dict[str, float]:
    host, port = address.rsplit(":", 1)
    queue = list(paths)
    total = 0

    async def worker() -> None:
        nonlocal total
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 22)
        while queue:
            got = await _request(reader, writer, queue.pop(0))
            total += got  # not `total += await ...`: that reads total before the await
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    seconds = time.perf_counter() - started
    return {"bytes": total, "seconds": seconds, "mb_per_s": total / seconds / 1e6}


async def ranges(address: str, size: int, parts: int) -> dict[str, float]:
    host, port = address.rsplit(":", 1)
    step = -(-size // parts)

    async def part(first: int) -> int:
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 22)
        last = min(size, first + step) - 1
        got = await _request(
            reader, writer, f"/blob?size={size}&seed=1", f"Range: bytes={first}-{last}\r\n"
        )
        writer.close()
        return got

    started = time.perf_counter()
    received = sum(await asyncio.gather(*(part(i) for i in range(0, size, step))))
    seconds = time.perf_counter() - started
    return {"bytes": received, "seconds": seconds, "mb_per_s": received / seconds / 1e6}


def main(argv: list[str]) -> None:
    if argv[0] == "download":
        result = asyncio.run(download(argv[1], int(argv[2])))
    elif argv[0] == "latency":
        result = asyncio.run(latency(argv[1], int(argv[2]), int(argv[3])))
    elif argv[0] == "pageload":
        with open(argv[3]) as f:
            paths = [line.strip() for line in f if line.strip()]
        result = asyncio.run(pageload(argv[1], int(argv[2]), paths))
    elif argv[0] == "ranges":
        result = asyncio.run(ranges(argv[1], int(argv[2]), int(argv[3])))
    else:
        raise SystemExit(__doc__)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
