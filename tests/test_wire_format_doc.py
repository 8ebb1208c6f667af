"""docs/wire-format.md promises other programs a stable format: hold it to the code."""

from __future__ import annotations

import re
from pathlib import Path

from core.codec import ERROR_KEY, encode_job
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
