"""LLM-judge win rate (paper Table 2) against any OpenAI-compatible chat-completions endpoint.

- The paper's prompt; a seeded random A/B position flip per comparison (position bias cancels).
- Only the final `More helpful: A|B` line is parsed; anything else is counted as unparseable and
  reported, never guessed. Requests that still fail after the retries are counted as errors.
- Bounded concurrency (threads), retries with exponential backoff on 408/429/5xx and network errors,
  and a disk cache keyed by sha256(model, prompt): a rerun pays nothing twice.
- The API key is read from an environment variable (its NAME is configured) at request time; it is
  never stored on the client, written to the cache or outputs, or put in an exception message.
Stdlib only (urllib), no new dependency.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from isdaa.io import atomic_write_json

# Paper Table 2. The extracted paper text prints "Response B: <Response B>" on one line (a layout
# artifact); we lay out A and B symmetrically, as in the DPO paper's original prompt.
JUDGE_PROMPT = (
    "For the following dialogue history to a chatbot, which response is more helpful?\n\n"
    "Dialogue history:\n{history}\n\n"
    "Response A:\n{response_a}\n\n"
    "Response B:\n{response_b}\n\n"
    "FIRST provide a one-sentence comparison of the two responses and explain which you feel is more "
    'helpful. SECOND, on a new line, state only "A" or "B" to indicate which response is more helpful. '
    "Your response should use the format:\n\n"
    "Comparison: <one-sentence comparison and explanation>\n\n"
    'More helpful: <"A" or "B">'
)

_VERDICT = re.compile(r"more helpful\s*[:：]\s*(.*)$", re.IGNORECASE)
_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


class JudgeError(RuntimeError):
    """A judge request failed (the message never contains the API key)."""


def parse_verdict(text: str) -> str | None:
    """'A' or 'B' from the LAST line mentioning `More helpful:`; None when absent or ambiguous.
    Accepts decorations like `**More helpful:** "B".`; rejects e.g. `A or B`, `both`."""
    for line in reversed(text.strip().splitlines()):
        m = _VERDICT.search(line.replace("*", ""))
        if m:
            answer = m.group(1).strip().strip("\"'<>`.[]() ").upper()
            return answer if answer in ("A", "B") else None
    return None


class JudgeClient:
    """Chat-completions client with a disk cache, retries and no stored secret.

    base_url: e.g. "https://api.openai.com/v1" (POST {base_url}/chat/completions);
    api_key_env: NAME of the environment variable holding the key (unset: no Authorization header,
    for local servers); cache_dir: one JSON file per (model, prompt) hash (None: no cache).
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 cache_dir: str | Path | None = None, max_retries: int = 5, backoff: float = 1.0,
                 timeout: float = 60.0, temperature: float = 0.0, max_tokens: int = 256):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.max_retries, self.backoff, self.timeout = max_retries, backoff, timeout
        self.temperature, self.max_tokens = temperature, max_tokens
        self.n_requests = self.n_cache_hits = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JudgeClient(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def cache_key(self, prompt: str) -> str:
        return hashlib.sha256(json.dumps([self.model, prompt]).encode()).hexdigest()

    def _cache_path(self, prompt: str) -> Path | None:
        if self.cache_dir is None:
            return None
        h = self.cache_key(prompt)
        return self.cache_dir / h[:2] / f"{h}.json"

    def complete(self, prompt: str) -> str:
        """The judge's answer to `prompt` (from the cache when present)."""
        path = self._cache_path(prompt)
        cached = self._read_cache(path)
        if cached is not None:
            with self._lock:
                self.n_cache_hits += 1
            return cached
        text = self._request(prompt)
        if path is not None:
            atomic_write_json(path, {"model": self.model, "response": text})
        return text

    @staticmethod
    def _read_cache(path: Path | None) -> str | None:
        """A cached answer, or None. A corrupt entry (atomic writes make one unlikely: a disk fault or a
        hand edit) is a cache miss, asked again and overwritten."""
        if path is None or not path.exists():
            return None
        try:
            response = json.loads(path.read_text(encoding="utf-8"))["response"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        return response if isinstance(response, str) else None

    def _request(self, prompt: str) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": self.temperature, "max_tokens": self.max_tokens}).encode()
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (1 + 0.25 * random.random()))
            with self._lock:
                self.n_requests += 1
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                return data["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}"
                if err.code not in _RETRYABLE:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = f"network error ({type(err).__name__})"
            except (ValueError, KeyError, IndexError, TypeError):
                last = "malformed response"
        msg = f"judge request to {self.url} failed after {attempt + 1} attempt(s): {last}"
        raise JudgeError(msg.replace(key, "***") if key else msg) from None


def judge_pairs(
    client: JudgeClient,
    prompts: Sequence[str],
    responses: Sequence[str],
    baselines: Sequence[str],
    seed: int = 0,
    workers: int = 8,
) -> dict:
    """Judge each `responses[i]` (the policy) against `baselines[i]` for `prompts[i]`.

    Comparison i shows the policy as A unless flipped (flip_i ~ Bernoulli(1/2) from `seed`). Returns
    win_rate (policy preferred, over parsed verdicts), se, n_total, n_parsed, n_unparseable, n_errors,
    and per-comparison records (flipped, verdict, policy_wins, judge text or error).
    """
    rng = random.Random(seed)
    flips = [rng.random() < 0.5 for _ in prompts]
    texts = [
        JUDGE_PROMPT.format(history=p, response_a=b if f else r, response_b=r if f else b)
        for p, r, b, f in zip(prompts, responses, baselines, flips)
    ]

    def one(t):
        try:
            return client.complete(t), None
        except JudgeError as err:
            return None, str(err)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        answers = list(pool.map(one, texts))
    records, wins = [], []
    for i, ((answer, error), flip) in enumerate(zip(answers, flips)):
        verdict = parse_verdict(answer) if answer is not None else None
        win = None if verdict is None else float(verdict == ("B" if flip else "A"))
        if win is not None:
            wins.append(win)
        records.append({"index": i, "flipped": flip, "verdict": verdict, "policy_wins": win,
                        "judge": answer, "error": error})
    n = len(wins)
    wr = sum(wins) / n if n else float("nan")
    return {
        "win_rate": wr,
        "se": math.sqrt(wr * (1 - wr) / n) if n else float("nan"),
        "n_total": len(texts),
        "n_parsed": n,
        "n_unparseable": sum(1 for a, e in answers if e is None and parse_verdict(a) is None),
        "n_errors": sum(1 for _, e in answers if e is not None),
        "n_flipped": sum(flips),
        "model": client.model,
        "seed": seed,
        "records": records,
    }
