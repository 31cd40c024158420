"""Text: a byte-level BPE tokenizer trained on a dataset's captions (Hugging Face ``tokenizers``).

Lower-cases (NFKC first), adds ``[BOS]``/``[EOS]``, pads with ``[PAD]`` (id 0) and truncates to a fixed
length. Byte-level pre-tokenization means every valid text has an encoding: unknown words never crash,
they split into known pieces (a string that is not valid UTF-8 is a ``TextError``, see
``dalle2.text_input``). Saved as a single ``tokenizer.json`` that holds all of this.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from dalle2.errors import Dalle2Error
from dalle2.folder_format import write_text_atomic
from dalle2.text_input import TextError, check_text

__all__ = ["SPECIAL_TOKENS", "TextError", "Tokenizer", "TokenizerError", "check_text"]

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3


class TokenizerError(Dalle2Error):
    """A tokenizer file is missing or invalid."""


class Tokenizer:
    """Fixed-length BPE tokenizer: ``encode(texts) -> (ids, mask)``, ``decode(ids) -> text``."""

    def __init__(self, backend: HFTokenizer):
        padding = backend.padding
        if padding is None or padding.get("length") is None or backend.truncation is None:
            raise TokenizerError("tokenizer.json must have fixed-length padding and truncation enabled")
        self.backend = backend
        self.max_length: int = padding["length"]
        self.pad_id: int = backend.token_to_id(PAD)
        self.vocab_size: int = backend.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1000, max_length: int = 32) -> Tokenizer:
        """Train byte-level BPE on ``texts`` (an iterator is fine; it is consumed once)."""
        backend = HFTokenizer(models.BPE(unk_token=UNK))
        backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        bos, eos = backend.token_to_id(BOS), backend.token_to_id(EOS)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)]
        )
        backend.enable_truncation(max_length)
        backend.enable_padding(pad_id=backend.token_to_id(PAD), pad_token=PAD, length=max_length)
        return cls(backend)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load from ``tokenizer.json`` or a folder that holds one."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"tokenizer not found: {path} (train one with `dalle2 train tokenizer`)")
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as error:  # the Rust side raises a plain Exception
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({error})") from None
        return cls(backend)

    def save(self, path: str | Path) -> Path:
        """Save to ``path`` (a folder gets ``tokenizer.json`` inside it); returns the file written."""
        path = Path(path)
        if path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "tokenizer.json"
        return write_text_atomic(path, self.backend.to_str(pretty=True))

    def encode(self, texts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> ``ids`` (B, max_length) int64 and ``mask`` (B, max_length) bool (True = real token).

        A text that is not valid UTF-8 (a lone surrogate) raises :class:`TextError` naming its position in
        ``texts``; any other string, including an empty one, has an encoding.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, text in enumerate(texts):
            check_text(text, "text" if len(texts) == 1 else f"text {i + 1} of {len(texts)}")
        encodings = self.backend.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # (B, L)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)  # (B, L)
        return ids, mask

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """One sequence of ids -> text, special tokens removed."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode(ids, skip_special_tokens=True)

    def tokens(self, text: str) -> list[str]:
        """The BPE pieces of ``text`` (for inspection), without specials or padding."""
        check_text(text)
        return [t for t in self.backend.encode(text).tokens if t not in SPECIAL_TOKENS]
