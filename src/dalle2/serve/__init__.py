"""``dalle2 serve``: an OpenAI Images API compatible server with a web page (see ``dalle2.serve.app``)."""

from dalle2.serve.app import create_app
from dalle2.serve.options import ServeOptions

__all__ = ["ServeOptions", "create_app"]
