"""Development delivery: each message becomes an .eml file in EMAIL_FILE_DIR.

Open the files with any mail reader to see exactly what SMTP would have sent. Files are
written under a temporary name and renamed, so a reader never sees half a message.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from core.errors import PermanentError, TransientError
from jobs.email.mime import Outgoing, to_mime_bytes
from jobs.email.transports.base import Failed, OnSent, Sent

__all__ = ["FileTransport"]


def _write(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    temporary = directory / f".{name}.tmp"
    temporary.write_bytes(data)
    os.replace(temporary, final)
    return final


class FileTransport:
    """The `Transport` used when neither SendGrid nor SMTP is configured."""

    name = "file"
    batch_size = 500

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"FileTransport({str(self.directory)!r})"

    async def send(self, message: Outgoing) -> Sent:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        digest = hashlib.sha256(message.message_id.encode()).hexdigest()[:16]
        try:
            await asyncio.to_thread(_write, self.directory, f"{stamp}-{digest}.eml", to_mime_bytes(message))
        except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            raise PermanentError(f"EMAIL_FILE_DIR {str(self.directory)!r}: {exc.strerror}") from None
        except OSError as exc:  # a full disk, say, may clear
            raise TransientError(f"EMAIL_FILE_DIR {str(self.directory)!r}: {exc.strerror}") from None
        return Sent(message.message_id)

    async def send_batch(
        self, messages: Sequence[Outgoing], on_sent: OnSent | None = None
    ) -> list[Sent | Failed]:
        outcomes: list[Sent | Failed] = []
        for message in messages:
            try:
                sent = await self.send(message)
            except (TransientError, PermanentError) as exc:
                outcomes.append(Failed(str(exc), isinstance(exc, PermanentError)))
                continue
            if on_sent is not None:
                await on_sent(message, sent)
            outcomes.append(sent)
        return outcomes

    async def aclose(self) -> None:
        return None
