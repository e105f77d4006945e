#!/usr/bin/env python3
"""Latency of the management API on a kept-alive connection: a node with its API in this
process (tests/apinode.py), an httpx client that keeps one connection open.

    .venv/bin/python benchmarks/api_latency.py        # 300 requests per path after 20 to warm up

Prints the median and p90 of `GET /healthz` (no token) and `GET /v1/node` (admin token). The
figure that matters is the one a missing TCP_NODELAY spoils: an answer waiting for the
client's delayed ACK costs ~40 ms per request.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402

from apinode import ApiNode  # noqa: E402

N, WARM = 300, 20


def main() -> None:
    node = ApiNode(Path(tempfile.mkdtemp(prefix="api-latency-"))).start()
    try:
        with httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {node.admin_token}"}) as c:
            for path in ("/healthz", "/v1/node"):
                for _ in range(WARM):
                    c.get(path)
                lat = []
                for _ in range(N):
                    t = time.perf_counter()
                    assert c.get(path).status_code == 200
                    lat.append((time.perf_counter() - t) * 1000)
                lat.sort()
                print(f"{path}: median {statistics.median(lat):.2f} ms, p90 {lat[int(N * 0.9)]:.2f} ms "
                      f"({N} keep-alive requests)")
    finally:
        node.stop()


if __name__ == "__main__":
    main()
