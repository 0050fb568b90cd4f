"""Load generator for the ack-latency row, run as its own process by `bench.run`.

It reads one JSON job on stdin, sends signed `/veeam-sa` slash commands alternately to
the bot and to the floor (the order inside each pair is random, so neither side is
systematically first), and prints the per-request latencies as JSON on stdout. Running
it outside the benchmark's main process keeps the doubles' threads (which serve the
bot's background traffic) from delaying the clock readings.

Job fields: ``targets`` ({label: events URL}), ``secret``, ``response_url``, ``count``,
``warmup`` (requests to each target first, not measured), ``warmup_text``, ``gap``
(seconds between pairs), ``text`` (a format string with ``{k}``), ``expect`` ({label: text
the answer must contain}), ``seed``.
"""

from __future__ import annotations

import json
import random
import sys
import time

import httpx

from tests.fakes.slack_requests import sign, slash_command_body


def run(job: dict) -> dict:
    targets: dict[str, str] = job["targets"]
    rng = random.Random(job.get("seed", 1))
    out: dict[str, list[float]] = {label: [] for label in targets}
    errors: dict[str, list[str]] = {label: [] for label in targets}
    #: wall-clock send time of each measured request, per target and text (the doubles
    #: record theirs on the same clock)
    sent: dict[str, dict[str, float]] = {label: {} for label in targets}
    clients = {label: httpx.Client(trust_env=False, timeout=30.0) for label in targets}
    labels = list(targets)

    def send(label: str, text: str) -> tuple[float, httpx.Response | None, str | None]:
        body = slash_command_body(text, response_url=job["response_url"]).encode()
        headers = sign(body, job["secret"])
        start = time.perf_counter()
        try:
            response = clients[label].post(targets[label], content=body, headers=headers)
        except httpx.HTTPError as exc:
            return time.perf_counter() - start, None, type(exc).__name__
        return time.perf_counter() - start, response, None

    try:
        for k in range(int(job.get("warmup", 0))):
            for label in labels:
                send(label, str(job.get("warmup_text") or "help").format(k=k))
                time.sleep(float(job.get("gap") or 0))
        for k in range(int(job["count"])):
            order = labels[:]
            rng.shuffle(order)
            text = str(job["text"]).format(k=k)
            for label in order:
                sent[label][text] = time.time()
                elapsed, response, error = send(label, text)
                if error is None and response is not None and response.status_code != 200:
                    error = f"HTTP {response.status_code}"
                if error is None and response is not None and job.get("expect", {}).get(label):
                    if job["expect"][label] not in response.text:
                        error = f"unexpected answer: {response.text[:120]}"
                if error:
                    errors[label].append(error)
                else:
                    out[label].append(elapsed)
            if job.get("gap"):
                time.sleep(float(job["gap"]))
    finally:
        for client in clients.values():
            client.close()
    return {"latencies": out, "errors": errors, "sent": sent}


def main() -> int:
    job = json.loads(sys.stdin.read())
    json.dump(run(job), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
