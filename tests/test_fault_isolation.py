"""Fault isolation (issue 23): one bad input never fails anything else, and every failure is one clear line.

Text that UTF-8 cannot encode (lone surrogates: JSON escapes, or argv / file bytes that are not UTF-8) is a 400,
a one-line error or a skipped sample at every entry point; a failing model call in the server is retried one
request at a time so only the bad request fails; OS errors on user paths, unreadable checkpoint files and config
values of the wrong type are one line naming the path or key; the url file store cleans up after a full disk;
PNGs get the umask's permissions. Property-based fuzzing (hypothesis) runs text over the whole Unicode range
through the tokenizer, ``dalle2 generate``, the server and the folder loader.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import io
import json
import os
import pathlib
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from dalle2.cli import main
from dalle2.config import ConfigError
from dalle2.data import DatasetError
from dalle2.data.folder import FolderDataset
from dalle2.grid import save_image_atomic
from dalle2.models.decoder import DiffusionConfig
from dalle2.models.prior import PriorConfig
from dalle2.models.unet import UNetConfig
from dalle2.pipeline import PipelineError
from dalle2.text import Tokenizer
from dalle2.text_input import TextError, check_text, is_valid_text
from dalle2.training import TrainingError
from tests.serve_support import FakePipe, ServerThread, open_png

FIXTURE = Path(__file__).parent / "fixtures" / "unclip-tiny"
LONE = "a \ud800 circle"  # valid JSON ("\\ud800"), not valid text

# Text over the whole code space: any character (surrogates included), plus the awkward ones on purpose.
AWKWARD = ["\x00", "\u202e", "\u200f", "\u0301", "\u2028", "\x85", "\ufeff", "\r", "\n", "\t", " ", "\U0001f4a5"]
CHARACTERS = st.one_of(
    st.characters(exclude_categories=()),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.sampled_from(AWKWARD),
)
TEXT = st.text(CHARACTERS, max_size=40)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load(FIXTURE / "tokenizer")


class TokenizingPipe(FakePipe):
    """A fake pipeline that tokenizes its prompts first, as the real ones do (so bad text fails in it)."""

    def __init__(self, tokenizer: Tokenizer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokenizer = tokenizer

    def __call__(self, prompts: str | list[str], n: int = 1, seed: int = 0) -> list[Image.Image]:
        self.tokenizer.encode([prompts] if isinstance(prompts, str) else list(prompts))
        return super().__call__(prompts, n, seed)


class PoisonPipe(FakePipe):
    """Fails any call that holds a prompt containing "poison": a PipelineError (the input's fault) for
    "poison input", any other exception (the server's fault) for "poison crash"."""

    def __call__(self, prompts: str | list[str], n: int = 1, seed: int = 0) -> list[Image.Image]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        with self.lock:
            self.calls.append({"prompts": prompts, "n": n, "seed": seed})
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        if any("poison input" in p for p in prompts):
            raise PipelineError("this prompt cannot be drawn")
        if any("poison crash" in p for p in prompts):
            raise RuntimeError("the model fell over")
        return [Image.new("RGB", (self.resolution,) * 2, (len(p) % 250, 0, 0)) for p in prompts for _ in range(n)]


def post(url: str, body: Any, path: str = "/v1/images/generations") -> tuple[int, dict[str, str], Any]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        raw = response.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed
    finally:
        connection.close()


def concurrently(bodies: list[Any], url: str) -> list[tuple[int, dict[str, str], Any]]:
    results: list[Any] = [None] * len(bodies)

    def run(i: int) -> None:
        results[i] = post(url, bodies[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def is_error_body(body: Any) -> bool:
    return isinstance(body, dict) and set(body) == {"error"} and set(body["error"]) == {
        "message", "type", "param", "code",
    }  # fmt: skip


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``dalle2 ARGV`` in this process: (exit status, stdout, stderr); a traceback fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("dalle2: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


# ------------------------------------------------------------------------------------ the one check
def test_check_text_names_the_position_without_echoing_the_character():
    with pytest.raises(TextError, match=r"^prompt is not valid UTF-8 text: character 3 of 10 is U\+D800") as info:
        check_text(LONE, "prompt")
    assert "\ud800" not in str(info.value)
    with pytest.raises(TextError, match="character 7 of 14 is the byte 0xFF, not UTF-8"):
        check_text("a red \udcff circle", "prompt")  # how Python keeps a non-UTF-8 argv byte
    with pytest.raises(TextError, match="must be text, got bytes"):
        check_text(b"a red circle")
    for fine in ("", "\x00", "\u202eabc", "e\u0301", "\U0001f4a5", "x" * 10_000):
        assert check_text(fine) is fine


@FUZZ
@given(TEXT)
@example("x" * 10_000)
@example("\x00\u202e\u0301\u2028")
@example(LONE)
def test_tokenizer_encodes_every_valid_text_and_refuses_the_rest_in_one_line(tokenizer, text):
    if is_valid_text(text):
        ids, mask = tokenizer.encode([text, "a red circle"])
        assert ids.shape == mask.shape == (2, tokenizer.max_length) and ids.dtype == torch.long
        assert mask[:, 0].all()  # BOS, whatever the text
        tokenizer.decode(ids[0])
    else:
        with pytest.raises(TextError, match=r"^text 1 of 2 is not valid UTF-8 text: character \d+"):
            tokenizer.encode([text, "a red circle"])


# ------------------------------------------------------------------------------------ the server
def test_one_poisoned_request_fails_alone_in_a_merged_batch():
    pipe = PoisonPipe(resolution=8, delay_s=0.05)
    from dalle2.serve import ServeOptions, create_app

    app = create_app({"fake": pipe}, ServeOptions(max_batch=64, max_wait_ms=400))
    good = [{"prompt": f"a good prompt {i}", "size": "8x8", "response_format": "b64_json"} for i in range(6)]
    bad_input = {"prompt": "poison input", "size": "8x8", "response_format": "b64_json"}
    crash = {"prompt": "poison crash", "size": "8x8", "response_format": "b64_json"}
    with ServerThread(app) as url:
        results = concurrently([*good[:3], bad_input, *good[3:], crash], url)
        metrics = http.client.HTTPConnection(*url.removeprefix("http://").split(":"))
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
    statuses = [r[0] for r in results]
    good_results = results[:3] + results[4:7]
    assert [r[0] for r in good_results] == [200] * 6, statuses
    for _, _, body in good_results:
        (item,) = body["data"]
        assert open_png(base64.b64decode(item["b64_json"])).size == (8, 8)
    status, _, body = results[3]  # the input's fault: 400, with the pipeline's words
    assert status == 400 and is_error_body(body) and "cannot be drawn" in body["error"]["message"]
    status, headers, body = results[7]  # not the input's fault: 500 naming the request id
    assert status == 500 and is_error_body(body) and body["error"]["type"] == "server_error"
    assert headers["x-request-id"] in body["error"]["message"]
    merged = [c for c in pipe.calls if len(c["prompts"]) > 1]
    assert merged and any(any("poison" in p for p in c["prompts"]) for c in merged), pipe.calls  # shared a call
    assert "dalle2_batch_isolated_total" in text


def test_a_lone_surrogate_prompt_is_a_400_and_its_batch_mates_succeed(tokenizer):
    from dalle2.serve import ServeOptions, create_app

    app = create_app({"fake": TokenizingPipe(tokenizer, resolution=8, delay_s=0.02)}, ServeOptions(max_wait_ms=300))
    bodies = [{"prompt": p, "size": "8x8", "response_format": "b64_json"} for p in ["a red circle"] * 6]
    bodies.insert(2, {"prompt": LONE, "size": "8x8", "response_format": "b64_json"})
    with ServerThread(app) as url:
        results = concurrently(bodies, url)
        # the error body itself must render when the bad text is echoed (model, size, unknown field names)
        echoed = [post(url, {"prompt": "a red circle", "model": "\ud800"}),
                  post(url, {"prompt": "a red circle", "size": "\udcff"}),
                  post(url, {"prompt": "a red circle", "\ud800": 1})]  # fmt: skip
    status, _, body = results.pop(2)
    assert status == 400 and body["error"]["param"] == "prompt" and body["error"]["code"] == "invalid_value"
    assert "character 3 of 10 is U+D800" in body["error"]["message"]
    assert [r[0] for r in results] == [200] * 6
    for status, _, body in echoed:
        assert 400 <= status < 500 and is_error_body(body), (status, body)


@pytest.fixture(scope="module")
def fuzz_server(tokenizer) -> Iterator[str]:
    from dalle2.serve import ServeOptions, create_app

    app = create_app({"fake": TokenizingPipe(tokenizer, resolution=8)}, ServeOptions(max_wait_ms=1))
    with ServerThread(app) as url:
        yield url


@FUZZ
@given(TEXT)
@example("x" * 10_000)
@example("\x00 \u202e\u05d0\u05d1 e\u0301")
@example("\ud800\udc00")
@example(LONE)
def test_server_fuzz_prompts_never_5xx(fuzz_server, text):
    body = json.dumps({"prompt": text, "size": "8x8", "response_format": "b64_json"})
    prompt = json.loads(body)["prompt"]  # what the server reads: an escaped surrogate pair is one character
    status, _, body = post(fuzz_server, body.encode())
    ok = is_valid_text(prompt) and prompt.strip() and len(prompt) <= 1000
    if ok:
        assert status == 200 and len(body["data"]) == 1, (status, body)
    else:
        assert status == 400 and is_error_body(body) and body["error"]["param"] == "prompt", (status, body)


def test_a_full_disk_is_a_507_and_leaves_no_file_behind(tmp_path, monkeypatch):
    from dalle2.serve import ServeOptions, create_app

    folder = tmp_path / "files"
    real = pathlib.Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:
        if self.parent == folder:  # what a full disk does: the file is created, the write fails
            real(self, b"")
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    app = create_app({"fake": FakePipe(resolution=8)}, ServeOptions(out=folder))
    with ServerThread(app) as url:
        status, _, body = post(url, {"prompt": "a red circle", "size": "8x8", "n": 2})
        b64 = post(url, {"prompt": "a red circle", "size": "8x8", "response_format": "b64_json"})
    assert status == 507 and is_error_body(body), (status, body)
    assert body["error"]["code"] == "insufficient_storage" and "No space left" in body["error"]["message"]
    assert list(folder.iterdir()) == []  # no zero-byte .png.tmp left
    assert b64[0] == 200


def test_file_store_removes_its_temporary_file_on_any_failure(tmp_path, monkeypatch):
    from dalle2.serve.files import FileStore, FileStoreError

    store = FileStore(tmp_path, 60)

    def refuse(src: Any, dst: Any) -> None:
        raise OSError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(FileStoreError, match="Permission denied") as info:
        store.save(b"\x89PNG")
    assert not info.value.full
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ dalle2 generate
def test_generate_with_a_non_utf8_argument_is_one_line(tiny_unclip):
    # what Python makes of `dalle2 generate $'a red \xff circle'`: the byte kept as U+DCFF
    code, _, err = run_cli("generate", "a red \udcff circle", "--model", tiny_unclip, "--no-progress")
    assert_one_line_error(code, err, "prompt is not valid UTF-8 text", "byte 0xFF")


def test_generate_prompt_file_that_is_not_utf8_names_the_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a red circle\n# a comment\na blue \xfe square\n")
    code, _, err = run_cli("generate", "--prompts", prompts, "--model", FIXTURE)
    assert_one_line_error(code, err, f"{prompts} line 3: not UTF-8 text (byte 0xFE)")


@FUZZ
@given(st.lists(TEXT, min_size=1, max_size=3))
@example(["x" * 10_000])
@example(["\x00", "\u202eabc\u0301", "a\u2028b"])
@example(["ok", LONE])
def test_generate_fuzz_prompts_one_line_or_images(tokenizer, monkeypatch, prompts):
    from dalle2 import generate_cli

    monkeypatch.setattr(generate_cli, "open_pipeline", lambda model, feature=None: TokenizingPipe(tokenizer))
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "out.png"
        options = ["--model", "unused", "-n", "1", "-o", output, "--no-progress"]
        code, _, err = run_cli("generate", *options, "--", *prompts)
        if all(is_valid_text(p) and p.strip() for p in prompts):
            assert code == 0 and err == "", err
            with Image.open(output) as image:
                assert image.width >= 8
        else:
            assert_one_line_error(code, err)


# ------------------------------------------------------------------------------------ the folder loader
@pytest.fixture(scope="module")
def images_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("captions")
    for i in range(4):
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(folder / f"{i}.png")
    return folder


@FUZZ
@given(st.lists(st.tuples(TEXT, st.booleans()), min_size=1, max_size=4))
@example([("a red \u2028 circle \x85 end", False), (LONE, True), (LONE, False), ("\ud800\udc00", True)])
def test_folder_fuzz_captions_kept_exactly_or_skipped_by_line(images_folder, entries):
    lines, captions = [], []
    for i, (caption, ascii_only) in enumerate(entries):
        line = json.dumps({"file_name": f"{i}.png", "text": caption}, ensure_ascii=ascii_only)
        lines.append(line.encode("utf-8", "surrogatepass"))  # a raw surrogate: a line that is not UTF-8
        # what the line means: "\\ud800\\udc00" escapes spell one valid character (U+10000), raw ones nothing
        captions.append(json.loads(line)["text"] if ascii_only else caption)
    (images_folder / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    usable = [is_valid_text(c) and bool(c.strip()) for c in captions]
    expected = [c.strip() for c, ok in zip(captions, usable, strict=True) if ok]
    if not expected:
        with pytest.raises(DatasetError, match="no usable captioned images"):
            FolderDataset(images_folder, resolution=8)
        return
    dataset = FolderDataset(images_folder, resolution=8)
    assert dataset.captions == expected  # nothing valid lost, nothing changed
    assert len(dataset.skipped) == len(entries) - len(expected)
    bad_lines = [i + 1 for i, ok in enumerate(usable) if not ok]
    assert [where for where, _ in dataset.skipped] == [f"metadata.jsonl line {n}" for n in bad_lines]


def test_train_all_with_unusable_captions_is_one_line_without_resume_advice(images_folder, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(images_folder, data)
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "text": LONE}) + "\n")
    with caplog.at_level("WARNING", logger="dalle2.data.folder"):
        code, _, err = run_cli("train", "all", "--data", f"folder:{data}", "--out", tmp_path / "run",
                               "--preset", "tiny", "--no-progress")  # fmt: skip
    assert_one_line_error(code, err, "no usable captioned images")
    assert "--resume" not in err
    assert any("metadata.jsonl line 1: 0.png: its caption is not valid UTF-8 text" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_webdataset_json_caption_that_is_not_text_is_skipped_alone(tmp_path, caplog):
    import tarfile

    from dalle2.data.webdataset import ShardDataset

    png = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(png, format="PNG")
    captions = {"000": LONE, "001": "a red \u2028 square"}
    members = {f"{key}.{ext}": png.getvalue() if ext == "png" else json.dumps({"caption": caption}).encode()
               for key, caption in captions.items() for ext in ("png", "json")}  # fmt: skip
    with tarfile.open(tmp_path / "000000.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with caplog.at_level("WARNING"):
        samples = list(ShardDataset(str(tmp_path / "000000.tar"), resolution=8))
    assert [s["caption"] for s in samples] == ["a red \u2028 square"]
    assert any("skipping sample 000" in r.getMessage() and "not valid UTF-8 text" in r.getMessage()
               for r in caplog.records)  # fmt: skip


# ------------------------------------------------------------------------------------ OS errors on user paths
@pytest.mark.parametrize("kind", ["file", "file/sub"])
def test_serve_and_train_all_out_paths_are_one_line(tmp_path, kind):
    (tmp_path / "file").write_text("in the way")
    out = tmp_path / kind
    code, _, err = run_cli("serve", "--out", out)
    assert_one_line_error(code, err, f"cannot use {out}:")
    code, _, err = run_cli("train", "all", "--out", out, "--preset", "tiny", "--no-progress")
    assert_one_line_error(code, err, f"cannot use {out}:")


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs Linux /sys (read-only for everyone, root too)")
def test_serve_out_without_permission_is_one_line():
    code, _, err = run_cli("serve", "--out", "/sys/dalle2-nope")
    assert_one_line_error(code, err, "cannot use /sys/dalle2-nope:")


# ------------------------------------------------------------------------------------ checkpoints
def _damage_pickle(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    torch.save({"state": Payload()}, path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda ck, marker: (ck / "optimizer.pt").write_bytes(b"not a torch file"), "not a torch file, or a damaged"),
        (lambda ck, marker: _damage_pickle(ck / "optimizer.pt", marker), "it holds Python objects, which are not"),
        (lambda ck, marker: torch.save({"something": torch.zeros(2)}, ck / "optimizer.pt"), "optimizer.pt"),
        (lambda ck, marker: (ck / "rng.safetensors").write_bytes(b"\x00" * 12), "rng.safetensors is unreadable"),
    ],
    ids=["garbage", "pickle", "other-shape", "rng"],
)
def test_unreadable_checkpoint_file_is_a_training_error_naming_it(tmp_path, damage, reason):
    from dalle2.training import latest_checkpoint
    from tests.test_trainer import make_trainer

    make_trainer(tmp_path, max_steps=2, checkpoint_every=2).train()
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    marker = tmp_path / "pickle-ran"
    damage(checkpoint, marker)
    with pytest.raises(TrainingError) as info:
        make_trainer(tmp_path, max_steps=4, checkpoint_every=2).train(resume=True)
    message = str(info.value)
    assert "\n" not in message and f"checkpoint file {checkpoint}/" in message
    assert "start afresh without --resume" in message and f"delete {checkpoint}" in message
    assert "weights_only=False" not in message and reason in message
    assert not marker.exists()  # the pickle was refused, not run


# ------------------------------------------------------------------------------------ PNG permissions
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_pngs_get_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "a.png")
        side = tmp_path / "a.jsonl"
        side.write_text("{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask == stat.S_IMODE(side.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------------------------ config types
@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (DiffusionConfig, {"sample_steps": "lots"}, "sample_steps must be int, got 'lots'"),
        (DiffusionConfig, {"guidance_scale": [3]}, "guidance_scale must be float, got [3]"),
        (DiffusionConfig, {"blur_sigma": "wide"}, "blur_sigma must be a list (tuple[float, float]), got 'wide'"),
        (PriorConfig, {"sample_steps": "lots"}, "sample_steps must be int, got 'lots'"),
        (UNetConfig, {"channels": [16, "x"]}, "net.channels must be a list of int, got [16, 'x']"),
    ],
)
def test_config_type_errors_name_the_key_and_type(cls, values, message):
    with pytest.raises(ConfigError) as info:
        cls.from_dict(values)
    assert str(info.value) == message


def test_stage_config_of_the_wrong_type_is_one_line(tmp_path):
    out = tmp_path / "pipe"
    shutil.copytree(FIXTURE, out)
    config = tmp_path / "bad.yaml"
    config.write_text("decoder:\n  sample_steps: lots\n")
    code, _, err = run_cli("train", "decoder", "--config", config, "--out", out, "--preset", "tiny")
    assert_one_line_error(code, err, "sample_steps must be int, got 'lots'")
