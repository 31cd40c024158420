"""Networks only (no training loops): ``clip.py`` (CLIP text and image towers), and later the prior,
decoder, upsampler and GAN."""
