"""Request validation: JSON bodies and multipart forms into one checked ``ImageRequest``.

Checks run in a fixed order (required fields, unknown fields, model, then each field), and each failure is
the 400 (404 for an unknown model) of the spec's section 4 with ``param`` naming the field. ``null`` (JSON) or
a left-out part (forms) means "the default". dalle2's own fields ``seed``, ``steps`` and ``guidance`` come as
extra JSON fields (``extra_body`` in the OpenAI client) or extra form parts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image

from dalle2.serve.errors import ApiError, bad_request
from dalle2.serve.registry import ModelRegistry, ServedModel
from dalle2.text_input import TextError, check_text

MAX_PROMPT_CHARS = 1000
MAX_N = 10
MAX_SEED = 2**63 - 1
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0
RESPONSE_FORMATS = ("url", "b64_json")
QUALITIES = ("standard", "auto")
GPT_IMAGE_ONLY = (
    "background", "moderation", "output_format", "output_compression", "partial_images", "input_fidelity",
    "complexity", "frame_count", "frame_duration_ms", "svg",
)  # fmt: skip
IGNORED = ("user", "safety_identifier")
DALLE2_EXTRAS = ("seed", "steps", "guidance")
COMMON = ("model", "n", "size", "response_format", *IGNORED, *DALLE2_EXTRAS)
KNOWN_FIELDS = {
    "generate": {"prompt", "quality", "style", "stream", *COMMON, *GPT_IMAGE_ONLY},
    "edit": {"image", "image[]", "mask", "prompt", "quality", "stream", *COMMON, *GPT_IMAGE_ONLY},
    "variation": {"image", "image[]", *COMMON},
}
_INT = re.compile(r"[+-]?\d{1,20}")


@dataclass
class ImageRequest:
    """A checked request of any of the three image routes."""

    kind: str  # generate | edit | variation
    model: ServedModel
    n: int
    size: int
    response_format: str
    prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    image: Image.Image | None = None
    mask: Image.Image | None = None

    @property
    def size_name(self) -> str:
        return f"{self.size}x{self.size}"

    def sampler_options(self) -> dict[str, Any]:
        return {k: v for k, v in (("steps", self.steps), ("guidance", self.guidance)) if v is not None}


def _type_error(value: Any, expected: str, param: str) -> ApiError:
    shown = value if isinstance(value, str) else repr(value)
    return bad_request(f"{shown!r} is not of type '{expected}' - '{param}'", param, "invalid_type")


def _integer(value: Any, param: str, low: int, high: int, form: bool) -> int:
    if form and isinstance(value, str) and _INT.fullmatch(value.strip()):
        value = int(value.strip())
    elif isinstance(value, float) and value.is_integer() and not form:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(value, "integer", param)
    if value < low:
        raise bad_request(f"{value} is less than the minimum of {low} - '{param}'", param, "integer_below_min_value")
    if value > high:
        raise bad_request(
            f"{value} is greater than the maximum of {high} - '{param}'", param, "integer_above_max_value"
        )
    return value


def _number(value: Any, param: str, low: float, high: float, form: bool) -> float:
    if form and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _type_error(value, "number", param) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _type_error(value, "number", param)
    if not low <= value <= high:
        raise bad_request(f"{value} is not between {low:g} and {high:g} - '{param}'", param, "invalid_value")
    return float(value)


def _boolean(value: Any, param: str, form: bool) -> bool:
    if form and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise _type_error(value, "boolean", param)
    return value


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _type_error(value, "string", param)
    return value


def _choice(value: Any, param: str, allowed: list[str] | tuple[str, ...]) -> str:
    text = _string(value, param)
    if text not in allowed:
        quoted = [f"'{a}'" for a in allowed]
        listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f", and {quoted[-1]}"
        raise bad_request(f"Invalid value: '{text}'. Supported values are: {listed}.", param, "invalid_value")
    return text


def check_prompt(value: Any) -> str:
    if value is None:
        raise bad_request("'prompt' is a required property", "prompt", "missing_required_parameter")
    prompt = _string(value, "prompt")
    try:
        check_text(prompt, "'prompt'")
    except TextError as error:
        raise bad_request(f"{error}.", "prompt", "invalid_value") from None
    if not prompt.strip():
        raise bad_request("'prompt' must not be empty: describe the image to make.", "prompt", "invalid_value")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise bad_request(
            f"Prompt must be length {MAX_PROMPT_CHARS} or less. Your prompt length is {len(prompt)}. "
            "Please reduce your prompt length.",
            "prompt",
            "string_above_max_length",
        )
    return prompt


def parse_request(kind: str, fields: dict[str, Any], registry: ModelRegistry, form: bool = False) -> ImageRequest:
    """Check the scalar fields of a request (``fields``: JSON object, or form parts as strings).
    Files (``image``, ``mask``) are checked by the route and attached afterwards."""
    if form:  # an empty form part is the same as a left-out one
        fields = {k: (None if v == "" else v) for k, v in fields.items()}
    prompt = check_prompt(fields.get("prompt")) if kind in ("generate", "edit") else None
    for name, value in fields.items():
        if name not in KNOWN_FIELDS[kind] and value is not None:
            raise bad_request(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
    model_id = fields.get("model")
    model = registry.get(None if model_id is None else _string(model_id, "model"))
    value = fields.get("n")
    n = 1 if value is None else _integer(value, "n", 1, MAX_N, form)
    value = fields.get("size")
    size = model.default if value is None else _size(_choice(value, "size", model.size_names))
    value = fields.get("response_format")
    response_format = "url" if value is None else _choice(value, "response_format", RESPONSE_FORMATS)
    if fields.get("quality") is not None:
        _choice(fields["quality"], "quality", QUALITIES)
    if fields.get("style") is not None:
        raise bad_request("The 'style' parameter is only supported for DALL·E 3.", "style", "unsupported_parameter")
    if fields.get("stream") is not None and _boolean(fields["stream"], "stream", form):
        raise bad_request("Streaming is only supported for GPT image models.", "stream", "unsupported_parameter")
    for name in GPT_IMAGE_ONLY:
        if fields.get(name) is not None:
            raise bad_request(f"'{name}' is only supported for GPT image models.", name, "unsupported_parameter")
    for name in IGNORED:
        if fields.get(name) is not None:
            _string(fields[name], name)
    value = fields.get("seed")
    seed = None if value is None else _integer(value, "seed", 0, MAX_SEED, form)
    value = fields.get("steps")
    steps = None if value is None else _integer(value, "steps", 1, MAX_STEPS, form)
    value = fields.get("guidance")
    guidance = None if value is None else _number(value, "guidance", 0.0, MAX_GUIDANCE, form)
    if (steps is not None or guidance is not None) and not model.takes_sampler_options:
        param = "steps" if steps is not None else "guidance"
        raise bad_request(
            f"'{param}' is only for unCLIP models; model `{model.id}` is a {model.kind!r} model.",
            param,
            "unsupported_parameter",
        )
    if kind != "generate" and kind not in model.features:
        what = "edits (inpainting)" if kind == "edit" else "variations"
        raise bad_request(
            f"Model `{model.id}` is a {model.kind!r} model, which cannot make {what}; use an unCLIP model.",
            "model",
            "unsupported_model",
        )
    return ImageRequest(kind, model, n, size, response_format, prompt, seed, steps, guidance)


def _size(name: str) -> int:
    return int(name.partition("x")[0])
