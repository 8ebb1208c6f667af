"""docs/wire-format.md promises other programs a stable format: hold it to the code."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from core.codec import ERROR_KEY, Signature, encode_job, sign, verify
from worker.backend import keys, scripts
from worker.backend.redis_backend import EXPIRES_EXTRA_MS
from worker.ledger.ledger import NOTIFY_CHANNEL

DOC = (Path(__file__).resolve().parents[1] / "docs" / "wire-format.md").read_text()


def _code_lines(text: str) -> list[str]:
    return [
        line.strip()
        for line in text.strip().splitlines()
        if line.strip() and not line.strip().startswith("--")
    ]


def test_the_enqueue_script_in_the_doc_is_the_one_the_runner_runs() -> None:
    [lua] = re.findall(r"```lua\n(.*?)```", DOC, re.S)
    assert _code_lines(lua) == _code_lines(scripts.ENQUEUE.source)


def test_keys_channel_expiry_and_record_fields_match_the_code() -> None:
    assert f"`{keys.job_key('<id>')}`" in DOC
    assert f"`{keys.result_key('<id>')}`" in DOC
    assert f"`{keys.in_progress_key('<id>')}`" in DOC
    assert f"`{keys.retry_key('<id>')}`" in DOC
    assert f"`{keys.wake_key('<queue>')}`" in DOC
    assert f"`{keys.health_check_key('<queue>')}`" in DOC
    assert f"**`{NOTIFY_CHANNEL}`**" in DOC
    assert f"{EXPIRES_EXTRA_MS:,}" in DOC
    assert f'{{"{ERROR_KEY}": ' in DOC
    record = encode_job("send_email", {}, enqueue_ms=1, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    for field in ('"t"', '"f"', '"a"', '"k"', '"et"', '"tp"'):
        assert field.encode() in record
        assert f"| `{field.strip(chr(34))}` |" in DOC


def test_a_record_signed_as_the_doc_says_is_one_the_runner_accepts() -> None:
    unsigned = encode_job("send_email", {"to": "a@example.com"}, enqueue_ms=1)
    key, job_id = b"k" * 32, "welcome:42"
    mac = hmac.new(key, job_id.encode() + b"\n" + unsigned, hashlib.sha256).hexdigest()
    by_the_doc = unsigned[:-1] + b',"sg":"' + mac.encode() + b'"}'
    assert len(by_the_doc) - len(unsigned) + 1 == 73
    assert by_the_doc == sign(unsigned, job_id, key)
    assert verify(by_the_doc, job_id, [b"other" * 8, key]) is Signature.VALID
