"""The ceiling: the fastest any ASGI app can answer from one uvicorn worker here.

A bare ASGI app (no framework, no upstream) that reads the request and sends
a fixed chat.completion, run as Sluice runs: uvicorn, uvloop + httptools, one
worker, no access log. No hit served through ASGI can be faster than this,
so the cache-hit table shows it next to Sluice's hits; Sluice's hit lane
answers below ASGI, in uvicorn's protocol, and can beat it.

    python bench/ceiling.py --port 9200
"""

from __future__ import annotations

import argparse

import uvicorn

ANSWER = (
    b'{"id":"chatcmpl-ceiling","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello!","refusal":null},'
    b'"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":20,"completion_tokens":2,"total_tokens":22}}'
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9200)
    args = parser.parse_args()
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", workers=1,
        access_log=False, log_level="warning", lifespan="off",
    )


if __name__ == "__main__":
    main()
