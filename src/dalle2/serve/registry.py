"""The models a server holds: their ids, the sizes each answers, and what each can do.

A model's id is its folder's name (made unique with ``-2``, ``-3``, ...); ``dall-e-2`` is an alias of the
first (default) model. Sizes: the model's native resolutions (unCLIP: the decoder's and the upsampler's) plus
DALL·E 2's 256x256, 512x512 and 1024x1024, which are made at the largest native size and resized (Lanczos).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dalle2.errors import Dalle2Error
from dalle2.serve.errors import ApiError

DEFAULT_ALIAS = "dall-e-2"
OPENAI_SIZES = (256, 512, 1024)
FEATURES = ("generate", "edit", "variation")


@dataclass
class ServedModel:
    id: str
    pipe: Any
    created: int = field(default_factory=lambda: int(time.time()))
    default_size: int = 0  # 0: the largest native size

    @property
    def kind(self) -> str:
        return str(getattr(self.pipe, "kind", type(self.pipe).__name__))

    @property
    def native_sizes(self) -> list[int]:
        sizes = getattr(self.pipe, "resolutions", None) or [self.pipe.resolution]
        return sorted({int(s) for s in sizes})

    @property
    def sizes(self) -> list[int]:
        return sorted({*self.native_sizes, *OPENAI_SIZES})

    @property
    def size_names(self) -> list[str]:
        return [f"{s}x{s}" for s in self.sizes]

    @property
    def default(self) -> int:
        return self.default_size or self.native_sizes[-1]

    def render_size(self, size: int) -> int:
        """The native size that a ``size`` image is made at (then resized when different)."""
        return size if size in self.native_sizes else self.native_sizes[-1]

    @property
    def features(self) -> list[str]:
        can = {"generate": True, "edit": callable(getattr(self.pipe, "edit", None))}
        can["variation"] = callable(getattr(self.pipe, "vary", None))
        return [f for f in FEATURES if can[f]]

    @property
    def takes_sampler_options(self) -> bool:
        """unCLIP pipelines take ``steps`` and ``guidance``; other kinds (the GAN) do not."""
        return self.kind == "unclip"

    def card(self, model_id: str | None = None) -> dict[str, Any]:
        """The OpenAI Model object, plus dalle2's own keys (ignored by the OpenAI client)."""
        return {
            "id": model_id or self.id,
            "object": "model",
            "created": self.created,
            "owned_by": "dalle2",
            "kind": self.kind,
            "root": self.id,
            "sizes": self.size_names,
            "default_size": f"{self.default}x{self.default}",
            "features": self.features,
        }


class ModelRegistry:
    """Ids to served models; the first model is the default and is also ``dall-e-2``."""

    def __init__(self, models: dict[str, Any], default_size: str | None = None) -> None:
        if not models:
            raise Dalle2Error("no models to serve")
        self.models: dict[str, ServedModel] = {}
        for name, pipe in models.items():
            if name == DEFAULT_ALIAS:
                raise Dalle2Error(f"{DEFAULT_ALIAS!r} is the alias of the default model; name the model otherwise")
            self.models[name] = ServedModel(name, pipe)
        self.default_id = next(iter(self.models))
        if default_size is not None:
            size = parse_size_name(default_size)
            for model in self.models.values():
                if size not in model.sizes:
                    raise Dalle2Error(
                        f"default size {default_size} is not one that model {model.id} makes: "
                        + ", ".join(model.size_names)
                    )
                model.default_size = size

    def ids(self) -> list[str]:
        return [DEFAULT_ALIAS, *self.models]

    def get(self, model_id: str | None) -> ServedModel:
        """The model for a request's ``model`` (None: the default); 404 ``model_not_found`` otherwise."""
        if model_id is None or model_id == DEFAULT_ALIAS:
            return self.models[self.default_id]
        if model_id in self.models:
            return self.models[model_id]
        raise ApiError(
            404,
            f"The model `{model_id}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )

    def cards(self) -> list[dict[str, Any]]:
        default = self.models[self.default_id]
        return [default.card(DEFAULT_ALIAS), *(m.card() for m in self.models.values())]


def parse_size_name(text: str) -> int:
    """``"256x256"`` -> 256; anything else (not square, not WxH) raises a Dalle2Error (a ValueError)."""
    width, sep, height = text.strip().lower().partition("x")
    if not sep or not width.isdigit() or width != height or int(width) < 1:
        raise Dalle2Error(f"size must be a square WIDTHxHEIGHT such as 256x256, got {text!r}")
    return int(width)


def unique_names(folders: list[str | Path]) -> list[str]:
    """Model ids from folder names: the basename, with -2, -3, ... for repeats."""
    names: list[str] = []
    for folder in folders:
        base = Path(folder).expanduser().resolve().name or "model"
        if base == DEFAULT_ALIAS:
            base = "model"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names
