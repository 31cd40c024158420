"""Pydantic models of the API's bodies, for the OpenAPI document at ``/docs`` and ``/openapi.json``.

Requests are checked by ``dalle2.serve.validation`` (so every failure gets the OpenAI error body and the
spec's messages); these models describe the same fields for readers of the docs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class GenerationRequest(BaseModel):
    prompt: str = Field(description="What to draw, 1-1000 characters.", max_length=1000)
    model: str | None = Field(None, description="A model id from /v1/models; default: dall-e-2 (the first model).")
    n: int | None = Field(None, ge=1, le=10, description="Images to make, 1-10; default 1.")
    size: str | None = Field(
        None, description="WxH: the model's native sizes or 256x256 / 512x512 / 1024x1024; default: the server's."
    )
    response_format: str | None = Field(None, description="url (default) or b64_json.")
    quality: str | None = Field(None, description="standard or auto (accepted, no effect).")
    style: str | None = Field(None, description="DALL·E 3 only: any value is refused.")
    user: str | None = Field(None, description="Accepted and ignored.")
    stream: bool | None = Field(None, description="false or null; true is refused.")
    seed: int | None = Field(
        None, ge=0, description="dalle2: reproducible images (the request then runs alone, without batching)."
    )
    steps: int | None = Field(None, ge=1, le=1000, description="dalle2, unCLIP only: decoder sampling steps.")
    guidance: float | None = Field(None, ge=0, le=100, description="dalle2, unCLIP only: decoder guidance scale.")


class ImageData(BaseModel):
    url: str | None = Field(None, description="With response_format=url: where the PNG is served (expires).")
    b64_json: str | None = Field(None, description="With response_format=b64_json: the PNG file, base64.")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class Model(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str
    kind: str | None = Field(None, description="dalle2: the pipeline kind (unclip, gan).")
    root: str | None = Field(None, description="dalle2: the model this id names (dall-e-2 is an alias).")
    sizes: list[str] | None = Field(None, description="dalle2: accepted sizes.")
    default_size: str | None = None
    features: list[str] | None = Field(None, description="dalle2: generate, edit, variation.")


class ModelList(BaseModel):
    object: str = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


def _multipart(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": properties, "required": required}}
            },
        }
    }


_FILE = {"type": "string", "format": "binary"}
_COMMON_FORM = {
    "model": {"type": "string"},
    "n": {"type": "integer", "minimum": 1, "maximum": 10},
    "size": {"type": "string"},
    "response_format": {"type": "string", "enum": ["url", "b64_json"]},
    "user": {"type": "string"},
    "seed": {"type": "integer", "minimum": 0},
    "steps": {"type": "integer", "minimum": 1, "maximum": 1000},
    "guidance": {"type": "number", "minimum": 0, "maximum": 100},
}
EDIT_FORM = _multipart(
    {
        "image": {**_FILE, "description": "Square PNG < 4 MB; its transparent pixels are edited when no mask."},
        "mask": {**_FILE, "description": "PNG of the same size; fully transparent pixels (alpha 0) are edited."},
        "prompt": {"type": "string", "maxLength": 1000},
        **_COMMON_FORM,
    },
    ["image", "prompt"],
)
VARIATION_FORM = _multipart({"image": {**_FILE, "description": "Square PNG < 4 MB."}, **_COMMON_FORM}, ["image"])
GENERATION_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": GenerationRequest.model_json_schema()}},
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "Invalid request"),
        (401, "Missing or wrong API key (when the server has one)"),
        (404, "Unknown model"),
        (413, "Body too large"),
        (429, "Queue full; see retry-after"),
        (503, "Timed out (--timeout-s)"),
    )
}
