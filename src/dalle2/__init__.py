"""dalle2: DALL·E 2 (unCLIP) and a text-conditional GAN, trainable on a laptop CPU."""

__version__ = "0.1.0"
