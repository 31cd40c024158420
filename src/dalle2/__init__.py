"""dalle2: DALL·E 2 (unCLIP) and a text-conditional GAN, trainable on a laptop CPU."""

__version__ = "0.1.0"

from dalle2.errors import Dalle2Error  # noqa: E402
from dalle2.pipeline import load  # noqa: E402

__all__ = ["Dalle2Error", "__version__", "load"]
