"""Example client for `slm serve`: a completion, a streamed chat answer, and candidate scoring.

    slm serve runs/quickstart/final &                  # or the Docker image / the Kubernetes Service
    python serving/client.py --url http://127.0.0.1:8000 --prompt "12+7*3"

Any OpenAI client works too (the `openai` package: OpenAI(base_url=URL + "/v1", api_key=KEY)).
Uses httpx (a dependency of slm-toolkit). Set SLM_API_KEY when the server was started with
--api-key-env SLM_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import os

import httpx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--prompt", default="12+7*3")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    key = os.environ.get("SLM_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=120) as client:
        model = client.get("/v1/models").raise_for_status().json()["data"][0]["id"]
        print(f"model: {model}")

        body = {"model": model, "prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0}
        out = client.post("/v1/completions", json=body).raise_for_status().json()
        print(f"completion: {out['choices'][0]['text']!r} ({out['choices'][0]['finish_reason']}, {out['usage']})")

        chat = {
            "model": model,
            "messages": [{"role": "user", "content": args.prompt}],
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        print("chat (streamed): ", end="", flush=True)
        with client.stream("POST", "/v1/chat/completions", json=chat) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                for choice in chunk["choices"]:
                    print(choice["delta"].get("content", ""), end="", flush=True)
                if chunk.get("usage"):
                    print(f"\n  usage: {chunk['usage']}")

        score = {"model": model, "prompt": args.prompt + "=", "candidates": ["33", "34", "2"]}
        for row in client.post("/v1/score", json=score).raise_for_status().json()["data"]:
            print(f"score {row['candidate']!r}: log p = {row['logprob']:.3f}")


if __name__ == "__main__":
    main()
