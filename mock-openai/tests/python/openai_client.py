"""Drives a freshly started mock-openai with the official `openai` Python package.

Usage: python3 openai_client.py http://127.0.0.1:PORT
The server must run with --config mock-openai/tests/python/mock.toml --speedup 100.
Exits non-zero (an AssertionError or an SDK exception) on the first failure.
"""

import io
import json
import sys
import time

import openai
from openai import OpenAI

MASK = (1 << 64) - 1

# The mock's tag function (mock-openai/src/tags.rs): FNV-1a 64 of the URL, then SplitMix64
# draws of 3-5 distinct words from a fixed vocabulary.
VOCABULARY = [
    "animal", "architecture", "autumn", "beach", "bicycle", "bird", "boat", "book", "bridge",
    "building", "car", "cat", "child", "city", "cloud", "coffee", "desert", "dog", "door",
    "field", "flower", "food", "forest", "fruit", "garden", "glass", "grass", "hill", "horse",
    "house", "ice", "island", "lake", "lamp", "leaf", "light", "market", "mountain", "music",
    "night", "ocean", "painting", "park", "people", "portrait", "rain", "river", "road",
    "rock", "sand", "shadow", "sky", "snow", "sport", "street", "summer", "sunset", "table",
    "train", "tree", "umbrella", "water", "window", "winter",
]


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & MASK
    return h


def tags_json(url: str) -> str:
    state = fnv1a64(url.encode())

    def draw() -> int:
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    count = 3 + draw() % 3
    picked = []
    for _ in range(256):
        if len(picked) == count:
            break
        word = VOCABULARY[draw() % len(VOCABULARY)]
        if word not in picked:
            picked.append(word)
    return '{"tags":[' + ",".join(f'"{t}"' for t in picked) + "]}"


def image_message(url: str) -> list:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Tag this image."},
                {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
            ],
        }
    ]


def wait_for(client: OpenAI, batch_id: str, statuses: set, limit_s: float = 60.0):
    deadline = time.monotonic() + limit_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} stuck in {batch.status}"
        time.sleep(0.05)


def main(base: str) -> None:
    client = OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)

    # 1. A realtime chat completion with an image part; the content is the URL's tags.
    url = "https://img.example/ci/cat.jpg?w=800&h=600"
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=image_message(url), max_tokens=60
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == tags_json(url), completion
    assert completion.usage.prompt_tokens > 2833, completion.usage
    assert int(raw.headers["x-ratelimit-limit-requests"]) == 500
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    print("chat with image: ok", completion.choices[0].message.content)

    # 2. Files + Batch API: upload JSONL, create, poll until completed, match outputs by
    # custom_id and check every line's tags against its image URL.
    urls = {f"req-{i}": f"https://img.example/ci/{i}.png" for i in range(5)}
    lines = [
        json.dumps(
            {
                "custom_id": cid,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "max_tokens": 60, "messages": image_message(u)},
            }
        )
        for cid, u in urls.items()
    ]
    payload = ("\n".join(lines) + "\n").encode()
    uploaded = client.files.create(file=("images.jsonl", io.BytesIO(payload)), purpose="batch")
    assert uploaded.bytes == len(payload) and uploaded.purpose == "batch", uploaded
    assert client.files.retrieve(uploaded.id).filename == "images.jsonl"
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "ci"},
    )
    assert batch.status == "validating" and batch.metadata == {"run": "ci"}, batch
    done = wait_for(client, batch.id, {"completed", "failed", "expired", "cancelled"})
    assert done.status == "completed", done
    assert done.request_counts.completed == len(urls), done.request_counts
    assert done.created_at <= done.in_progress_at <= done.completed_at <= done.expires_at
    output = client.files.content(done.output_file_id).text
    seen = {}
    for line in output.splitlines():
        row = json.loads(line)
        assert row["error"] is None and row["response"]["status_code"] == 200, row
        seen[row["custom_id"]] = row["response"]["body"]["choices"][0]["message"]["content"]
    assert set(seen) == set(urls), seen
    for cid, content in seen.items():
        assert content == tags_json(urls[cid]), (cid, content)
    print(f"batch {done.id}: completed, {len(seen)} outputs matched by custom_id and tags")

    # 3. batches.list (paginated) and batches.cancel.
    second = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelled = client.batches.cancel(second.id)
    assert cancelled.status in ("cancelling", "cancelled"), cancelled
    cancelled = wait_for(client, second.id, {"cancelled"})
    assert cancelled.cancelled_at is not None
    page = client.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id] and page.has_more, page
    # Auto-pagination follows `after` through `has_more`, one batch per page.
    ids = [b.id for b in client.batches.list(limit=1)]
    assert ids == [second.id, batch.id], ids
    print("batches.list and batches.cancel: ok", ids)

    # 4. files.list: paged one file at a time through `after`, the same files as in one page;
    # the input file under purpose batch, the completed batch's output under batch_output.
    everything = [f.id for f in client.files.list().data]
    assert [f.id for f in client.files.list(limit=1)] == everything, everything
    assert [f.id for f in client.files.list(purpose="batch")] == [uploaded.id], everything
    outputs = [f.id for f in client.files.list(purpose="batch_output", order="asc")]
    assert done.output_file_id in outputs, outputs
    print("files.list: ok", len(everything), "files")

    # 5. RPM exceeded: a RateLimitError whose x-ratelimit-* headers are readable.
    tiny = OpenAI(base_url=f"{base}/v1", api_key="sk-tiny", max_retries=0)
    tiny.chat.completions.create(model="gpt-4o-mini", messages=image_message(url))
    try:
        tiny.chat.completions.create(model="gpt-4o-mini", messages=image_message(url))
        raise AssertionError("expected a RateLimitError")
    except openai.RateLimitError as e:
        h = e.response.headers
        assert h["x-ratelimit-limit-requests"] == "1", dict(h)
        assert h["x-ratelimit-remaining-requests"] == "0", dict(h)
        assert h["x-ratelimit-reset-requests"].endswith("s"), dict(h)
        assert int(h["retry-after"]) >= 1 and float(h["retry-after-ms"]) > 0, dict(h)
        assert e.code == "rate_limit_exceeded" and e.type == "requests", e.body
        assert "on requests per min (RPM): Limit 1, Used 1, Requested 1." in e.message, e.message
        print("RateLimitError:", h["x-ratelimit-reset-requests"], e.message[:80])

    # 6. A bad key.
    try:
        OpenAI(base_url=f"{base}/v1", api_key="sk-wrong-key-0000", max_retries=0).models.list()
        raise AssertionError("expected an AuthenticationError")
    except openai.AuthenticationError as e:
        assert e.code == "invalid_api_key", e.body
        assert "sk-wrong-key-0000" not in e.message, e.message
        print("AuthenticationError: ok")

    # 7. A malformed body: image_url given as a string.
    try:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": url}]}],
        )
        raise AssertionError("expected a BadRequestError")
    except openai.BadRequestError as e:
        assert e.param == "messages[0].content[0].image_url", e.body
        assert "expected an object, but got a string instead" in e.message, e.message
        print("BadRequestError: ok")

    print("openai_client.py: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"))
