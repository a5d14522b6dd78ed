"""The LLM-judge client against a local OpenAI-compatible server (http.server in a thread)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

KEY = "sk-test-SECRET-123"


class FakeJudge(BaseHTTPRequestHandler):
    """Prefers the response containing GOOD; answers garbage when a response contains GARBLE; fails
    the first `fail_first` requests with HTTP 500; 401 without the right key."""

    state: ClassVar[dict] = {"n": 0, "fail_first": 0, "positions": []}

    def log_message(self, *args):
        pass

    def do_POST(self):
        st = self.state
        st["n"] += 1
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._send(401, {"error": "bad key"})
        if st["n"] <= st["fail_first"]:
            return self._send(500, {"error": "overloaded"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        a = re.search(r"Response A:\n(.*?)\n\nResponse B:", prompt, re.DOTALL).group(1)
        b = re.search(r"Response B:\n(.*?)\n\nFIRST", prompt, re.DOTALL).group(1)
        st["positions"].append("A" if "policy" in a else "B")
        if "GARBLE" in a + b:
            content = "Comparison: both are fine.\nMore helpful: neither"
        else:
            content = f"Comparison: one says GOOD.\n**More helpful:** \"{'A' if 'GOOD' in a else 'B'}\""
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def server():
    FakeJudge.state.update(n=0, fail_first=0, positions=[])
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", FakeJudge.state
    srv.shutdown()
    srv.server_close()


def test_parse_verdict():
    from isdaa.evaluate.judge import parse_verdict

    assert parse_verdict("Comparison: x\nMore helpful: A") == "A"
    assert parse_verdict('Comparison: x\n**More helpful:** "B".') == "B"
    assert parse_verdict("More helpful: A\nthinking again...\nMore helpful: B") == "B"  # the final line
    assert parse_verdict("More helpful: A or B") is None
    assert parse_verdict("I prefer A") is None and parse_verdict("") is None


def test_flip_bookkeeping_retries_parse_failures_and_cache(server, tmp_path, monkeypatch):
    from isdaa.evaluate.judge import JudgeClient, judge_pairs

    url, st = server
    monkeypatch.setenv("JUDGE_KEY", KEY)
    prompts = [f"question {i}" for i in range(24)]
    policy = [f"policy GOOD answer {i}" for i in range(20)] + [f"policy GARBLE {i}" for i in range(4)]
    base = [f"baseline answer {i}" for i in range(24)]
    st["fail_first"] = 3  # transient server errors: retried with backoff
    client = JudgeClient(url, "judge-1", api_key_env="JUDGE_KEY", cache_dir=tmp_path / "cache",
                         backoff=0.001, max_retries=5)
    res = judge_pairs(client, prompts, policy, base, seed=0, workers=4)
    # the policy is always the better one: with correct flip bookkeeping it wins every parsed comparison
    assert res["win_rate"] == 1.0 and res["n_parsed"] == 20
    assert res["n_unparseable"] == 4 and res["n_errors"] == 0
    assert 0 < res["n_flipped"] < 24 and {"A", "B"} <= set(st["positions"])
    assert st["n"] == 24 + 3
    flips = [r["flipped"] for r in res["records"]]
    # the same baseline winning instead: win rate 0 (position flips do not leak into the result)
    rev = judge_pairs(JudgeClient(url, "judge-1", api_key_env="JUDGE_KEY", backoff=0.001),
                      prompts[:20], [f"policy {i}" for i in range(20)], [f"GOOD {i}" for i in range(20)])
    assert rev["win_rate"] == 0.0 and [r["flipped"] for r in rev["records"]] == flips[:20]  # seeded

    # rerun with a new client on the same cache: no request at all, same answers
    n_before = st["n"]
    client2 = JudgeClient(url, "judge-1", api_key_env="JUDGE_KEY", cache_dir=tmp_path / "cache")
    again = judge_pairs(client2, prompts, policy, base, seed=0, workers=4)
    assert st["n"] == n_before and client2.n_cache_hits == 24
    assert again["win_rate"] == res["win_rate"] and again["records"] == res["records"]
    # another model is another cache key
    judge_pairs(JudgeClient(url, "judge-2", api_key_env="JUDGE_KEY", cache_dir=tmp_path / "cache"),
                prompts[:2], policy[:2], base[:2])
    assert st["n"] == n_before + 2
    # the key is never written
    for p in (tmp_path / "cache").rglob("*.json"):
        assert KEY not in p.read_text()
    assert KEY not in json.dumps(res) and KEY not in repr(client)


def test_failures_are_counted_and_key_not_leaked(server, monkeypatch):
    from isdaa.evaluate.judge import JudgeClient, JudgeError, judge_pairs

    url, st = server
    monkeypatch.setenv("JUDGE_KEY", "wrong-" + KEY)
    client = JudgeClient(url, "judge-1", api_key_env="JUDGE_KEY", backoff=0.001, max_retries=3)
    with pytest.raises(JudgeError) as info:
        client.complete("hello")
    assert "HTTP 401" in str(info.value) and KEY not in str(info.value)
    assert st["n"] == 1  # 401 is not retried
    monkeypatch.setenv("JUDGE_KEY", KEY)
    st["fail_first"] = 100  # persistent 500s: retries exhausted, counted as errors, not guessed
    res = judge_pairs(client, ["q"], ["policy GOOD"], ["b"], workers=1)
    assert res["n_errors"] == 1 and res["n_parsed"] == 0 and res["records"][0]["verdict"] is None
    assert st["n"] == 1 + 4


def test_cli_judge(server, tmp_path, monkeypatch):
    """`isdaa judge` on an `isdaa eval` samples file; a second run is served from the cache."""
    from click.testing import CliRunner

    from isdaa.cli import main
    from isdaa.io import atomic_write_jsonl

    url, st = server
    monkeypatch.setenv("JUDGE_KEY", KEY)
    atomic_write_jsonl(tmp_path / "data.jsonl", [{"prompt": f"q{i}", "chosen": f"base {i}"} for i in range(3)])
    atomic_write_jsonl(tmp_path / "samples.jsonl",
                       [{"prompt_idx": i // 2, "response": f"policy GOOD {i}"} for i in range(6)])
    args = ["judge", "--samples", str(tmp_path / "samples.jsonl"), "--data", str(tmp_path / "data.jsonl"),
            "--base-url", url, "--model", "judge-1", "--api-key-env", "JUDGE_KEY",
            "--out", str(tmp_path / "judge.json"), "--workers", "2"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "judge.json").read_text())
    assert res["win_rate"] == 1.0 and res["n_parsed"] == 6 and st["n"] == 6
    assert CliRunner().invoke(main, args).exit_code == 0 and st["n"] == 6
    assert KEY not in (tmp_path / "judge.json").read_text()


def test_corrupt_cache_entry_is_a_miss_and_is_rewritten(server, tmp_path, monkeypatch):
    from isdaa.evaluate.judge import JudgeClient

    url, st = server
    monkeypatch.setenv("JUDGE_KEY", KEY)
    prompt = "Response A:\npolicy GOOD\n\nResponse B:\nother\n\nFIRST ..."
    client = JudgeClient(url, "judge-1", api_key_env="JUDGE_KEY", cache_dir=tmp_path / "cache")
    first = client.complete(prompt)
    entry = client._cache_path(prompt)
    entry.write_text('{"model": "judge-1", "respo')  # truncated by a disk fault
    again = JudgeClient(url, "judge-1", api_key_env="JUDGE_KEY", cache_dir=tmp_path / "cache")
    assert again.complete(prompt) == first
    assert st["n"] == 2 and again.n_cache_hits == 0  # asked again, not a crash
    assert json.loads(entry.read_text())["response"] == first  # and the entry repaired
