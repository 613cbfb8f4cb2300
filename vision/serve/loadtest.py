"""Load generator for the REST server: N requests at concurrency C, latency percentiles.

    report = asyncio.run(drive("http://127.0.0.1:8000", png_bytes, requests=1000, concurrency=16))
    report["throughput_rps"], report["latency_ms_p50"], report["latency_ms_p99"], report["errors"]
"""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np


async def drive(url: str, image: bytes, *, requests: int = 1000, concurrency: int = 16,
                content_type: str = "image/png", api_key: str | None = None,
                timeout: float = 60) -> dict:
  """Posts `image` to URL/v1/predict `requests` times with `concurrency` in flight."""
  latencies: list[float] = []
  errors: dict[str, int] = {}
  remaining = iter(range(requests))
  headers = {"X-API-Key": api_key} if api_key else {}
  limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

  async def worker(client: httpx.AsyncClient) -> None:
    for _ in remaining:
      start = time.perf_counter()
      try:
        response = await client.post(
            "/v1/predict", files={"file": ("image.png", image, content_type)}, headers=headers)
        ok = response.status_code == 200
        key = None if ok else str(response.status_code)
      except httpx.HTTPError as error:
        key = type(error).__name__
      if key is None:
        latencies.append(time.perf_counter() - start)
      else:
        errors[key] = errors.get(key, 0) + 1

  async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
    start = time.perf_counter()
    await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - start
  ms = np.asarray(latencies) * 1000
  percentile = (lambda q: float(np.percentile(ms, q))) if len(ms) else (lambda q: None)
  return {"requests": requests, "concurrency": concurrency, "seconds": seconds,
          "throughput_rps": len(latencies) / seconds, "errors": sum(errors.values()),
          "errors_by_kind": errors, "latency_ms_p50": percentile(50),
          "latency_ms_p90": percentile(90), "latency_ms_p99": percentile(99),
          "latency_ms_max": float(ms.max()) if len(ms) else None}
