"""Clients refused together: do they come back together? N ``openai.AsyncOpenAI`` clients start at
once against a server with few compute slots (``postemb serve --max-concurrent-requests 2``), each
sending R requests of P short posts with the client's own retries (``max_retries``), which wait
what the 429's ``retry-after-ms`` / ``Retry-After`` says. Prints one JSON line: requests, those that
still ended in RateLimitError, HTTP attempts, wall seconds. (benchmarks/RESULTS.md, "Refused clients")

    postemb serve --model base --port 18231 --max-concurrent-requests 2 &
    python benchmarks/load_retries.py --url http://127.0.0.1:18231 --clients 16 --requests 4 --posts 32
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time


async def run(url: str, clients: int, requests: int, posts: int, retries: int) -> dict:
    import httpx
    import openai

    from postemb_rt.data import short_posts

    texts = short_posts(clients * requests * posts)
    attempts = 0

    async def count(_request):
        nonlocal attempts
        attempts += 1

    async def client(i: int) -> int:
        http = httpx.AsyncClient(event_hooks={"request": [count]})
        oa = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=retries, http_client=http)
        failed = 0
        for r in range(requests):
            start = (i * requests + r) * posts
            try:
                await oa.embeddings.create(model="m", input=texts[start:start + posts])
            except openai.RateLimitError:
                failed += 1
        await http.aclose()
        return failed

    t0 = time.perf_counter()
    failed = await asyncio.gather(*(client(i) for i in range(clients)))
    return {"requests": clients * requests, "failed": sum(failed), "http_attempts": attempts,
            "wall_s": round(time.perf_counter() - t0, 2)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:18231")
    p.add_argument("--clients", type=int, default=16, help="clients started at once (default 16)")
    p.add_argument("--requests", type=int, default=4, help="requests per client, one after another (default 4)")
    p.add_argument("--posts", type=int, default=32, help="short posts per request (default 32)")
    p.add_argument("--retries", type=int, default=2, help="the openai client's max_retries (default 2, its own)")
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(run(a.url, a.clients, a.requests, a.posts, a.retries))))


if __name__ == "__main__":
    main()
