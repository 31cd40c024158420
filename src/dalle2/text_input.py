"""The one check every text entry point runs: API prompts, CLI arguments and prompt files, dataset captions.

A Python ``str`` can hold code points that are not text: lone surrogates (U+D800 to U+DFFF). They arrive from
JSON escapes (``"\\ud800"``) and from command-line arguments or file names whose bytes are not UTF-8 (Python
keeps such a byte as U+DC80 to U+DCFF). UTF-8 cannot encode them, so the tokenizer, the JSON-lines writers
and the terminal all fail on them. :func:`check_text` turns them into one :class:`TextError` line that says
where the bad character is, without echoing it. Everything else (NUL, control characters, right-to-left text,
combining marks, emoji, any length) is valid text and passes unchanged.

No heavy imports here: the CLI checks prompts before torch is loaded.
"""

from __future__ import annotations

from dalle2.errors import Dalle2Error

__all__ = ["TextError", "check_text", "is_valid_text"]


class TextError(Dalle2Error):
    """A prompt or caption that is not usable text; the message names it and the bad character's position."""


def is_valid_text(text: object) -> bool:
    """True for a ``str`` that UTF-8 can encode (no lone surrogates)."""
    if not isinstance(text, str):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(text: object, what: str = "text") -> str:
    """``text`` unchanged if it is a ``str`` that UTF-8 can encode; otherwise :class:`TextError` (one line).

    ``what`` names the input in the message, e.g. ``"prompt"`` or ``"metadata.jsonl line 7: caption"``.
    """
    if not isinstance(text, str):
        raise TextError(f"{what} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        where = f"character {error.start + 1} of {len(text)}"
        if 0xDC80 <= code <= 0xDCFF:  # how Python keeps an undecodable byte (surrogateescape)
            detail = f"{where} is the byte 0x{code - 0xDC00:02X}, not UTF-8 (was it written in another encoding?)"
        else:
            detail = f"{where} is U+{code:04X}, a lone surrogate that is not a Unicode character"
        raise TextError(f"{what} is not valid UTF-8 text: {detail}") from None
    return text
