import pytest
import torch

from dalle2.text import Tokenizer, TokenizerError

CAPTIONS = [
    "a red circle above a blue square",
    "two green stars on a black background",
    "a small red circle in the top left corner",
    "a yellow heart to the right of a purple cross",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(CAPTIONS, vocab_size=400, max_length=24)


def test_round_trip_lowercases_and_pads(tokenizer):
    ids, mask = tokenizer.encode(["A Red Circle above a blue square", "two green stars"])
    assert ids.shape == (2, 24) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert tokenizer.decode(ids[0]) == "a red circle above a blue square"
    assert tokenizer.decode(ids[1]) == "two green stars"
    assert (ids[~mask] == tokenizer.pad_id).all() and mask[:, 0].all()
    # frequent caption words became single tokens
    assert len(tokenizer.tokens("a red circle")) == 3


def test_unknown_words_never_crash(tokenizer):
    ids, mask = tokenizer.encode(["a crimson disc ⚽ über zzz", ""])
    assert ids.shape == (2, 24)
    assert mask[1].sum() == 2  # empty text: just BOS and EOS
    assert tokenizer.decode(tokenizer.encode("a crimson disc")[0][0]) == "a crimson disc"


def test_truncates_to_max_length_keeping_eos(tokenizer):
    ids, mask = tokenizer.encode("a red circle " * 50)
    assert ids.shape == (1, 24) and mask.all()
    assert ids[0, -1].item() == tokenizer.backend.token_to_id("[EOS]")


def test_save_load_identical(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "tok")
    assert path.name == "tokenizer.json"
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.max_length == 24 and loaded.vocab_size == tokenizer.vocab_size
    assert torch.equal(loaded.encode(CAPTIONS[:4])[0], tokenizer.encode(CAPTIONS[:4])[0])


def test_load_errors(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path)
