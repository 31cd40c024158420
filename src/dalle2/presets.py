"""Every preset of every component, as plain data: the one place to read or change a preset.

Per preset name, :data:`BASE` holds the shared ``data`` / ``text`` sections (and the ``train`` keys no
stage sets itself), as overrides on the dataclass defaults of :mod:`dalle2.config`. Per stage and
preset, :data:`STAGE_PRESETS` holds

* ``train``: the stage's train-section defaults (over :data:`BASE`'s),
* ``model``: the stage's own config section (``clip``: :class:`~dalle2.models.clip.ClipConfig` fields;
  ``prior``: :class:`~dalle2.models.prior.PriorConfig` fields; ``decoder`` / ``upsampler``:
  :class:`~dalle2.models.decoder.DiffusionConfig` fields with ``net``; ``gan``: keys of
  :data:`GAN_DEFAULTS`), as overrides on that section's defaults,
* ``stage``: the stage keys that live in the same section but are no model field (``prior``, ``decoder``,
  ``upsampler``: pool and report sizes, EMA decay; ``clip`` and ``gan`` keep theirs among the section's
  fields),
* optionally ``base`` (the :data:`BASE` preset it builds on; default: its own name) and ``data``.

:func:`dalle2.config.resolve_stage` reads these tables for every stage: preset < ``--config`` YAML <
``--set`` < dedicated options; ``dalle2 config --preset P`` prints the result for every stage. This
module imports nothing, so models and the config resolver can both read it. Measurements behind the
choices are in ``docs/results.md``.
"""

from __future__ import annotations

from typing import Any

#: the diffusion samplers of the prior and the decoder: one list for dalle2.diffusion, the configs and the CLI choices
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")

__all__ = ["BASE", "GAN_DEFAULTS", "STAGES", "STAGE_PRESETS"]

#: the stages with a config section, in training order
STAGES = ("clip", "prior", "decoder", "upsampler", "gan")

#: shared sections per preset, as overrides on the defaults of dalle2.config (which are the cpu preset)
BASE: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "data": {"resolution": 16, "output_resolution": 32},
        "text": {"vocab_size": 300, "max_length": 24},
    },
    "cpu": {},
    "gpu": {
        "data": {"resolution": 64, "output_resolution": 256, "num_workers": 8},
        "text": {"vocab_size": 8000, "max_length": 64},
        "train": {"mixed_precision": "bf16"},
    },
}

#: every key of the ``gan`` section with its default (= the cpu preset)
GAN_DEFAULTS: dict[str, Any] = {
    # networks (dalle2.models.gan.GanConfig)
    "arch": "dfgan",  # dfgan | article
    "z_dim": 100,
    "g_width": 8,  # dfgan: channels at full resolution, x2 per halving up to x max_mult
    "d_width": 8,
    "max_mult": 8,
    "dense_widths": [128, 256, 512, 1024],  # article generator
    "conv_widths": [32, 64, 128, 256],  # article discriminator
    "spectral_norm": False,
    "projection": False,  # dfgan D: projection term <W s, features> (Miyato & Koyama 2018)
    "embed_scale": "unit",  # none | unit: the unit-norm sentence embedding x sqrt(dim) (z's scale)
    "minibatch_std": 4,  # dfgan D: minibatch standard deviation over groups of N images (0 = off)
    "channels": 0,  # 0 = auto: 1 for mnist / fashion-mnist, else 3
    # objective (dalle2.models.gan_objective.ObjectiveConfig)
    "loss": "hinge",  # hinge | bce
    "mismatch": True,
    "ma_gp": 2.0,  # 0 = off
    "ma_gp_power": 6.0,
    "ma_gp_every": 4,
    "diffaugment": True,
    "l1": 0.0,
    "l2": 0.0,
    "mode_seeking": 0.1,  # MSGAN weight: two noises for one caption must differ (0 = off; docs/results.md)
    # optimisers (G at train.learning_rate, D at train.learning_rate * d_lr_scale; constant)
    "optimizer": "adam",  # adam | sgd
    "d_lr_scale": 4.0,
    "beta1": 0.0,
    "beta2": 0.9,
    "momentum": 0.0,  # sgd
    "max_grad_norm": 0.0,  # 0 = no clipping
    # stage
    "ema_decay": 0.999,
    "eval_samples": 256,
    "sample_every": 250,
    "monitor_every": 250,
    "collapse_accuracy": 0.99,
    "collapse_patience": 5,
    "mode_collapse_ratio": 0.05,  # near-identical images per prompt (an untrained G sits near 0.1)
}

STAGE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "clip": {
        "tiny": {
            "train": {"batch_size": 8, "max_steps": 4, "checkpoint_every": 2, "learning_rate": 1e-3},
            "model": {
                "embed_dim": 32, "text_width": 32, "text_layers": 1, "text_heads": 2, "vision_width": 32,
                "vision_layers": 1, "vision_heads": 2, "eval_samples": 40, "ema_decay": 0.9,
                "conv_widths": [8, 16], "conv_blocks": 1,
            },
            "stage": {},
        },
        "cpu": {
            "train": {"batch_size": 64, "max_steps": 3000, "checkpoint_every": 250, "learning_rate": 1e-3},
            # the convolutional image tower: at equal minutes (7.1 vs 6.8) R@1 0.81 / 0.85 against the ViT's 0.70 /
            # 0.71, zero-shot shape 0.51 against 0.26, count 0.99, position 0.88 (docs/results.md, CLIP,
            # 2026-12-03); vision_arch=vit restores the ViT (patch 8: 16 tokens at 32x32, 4x faster than patch 4).
            # BatchNorm (CLIP's ResNet's norm): over three seeds zero-shot shape 0.66 against GroupNorm's 0.49, at a
            # cost in position, 0.83 against 0.92 (docs/results.md, CLIP, 2026-12-04, "over three seeds").
            # Max-pool downsampling: shape 0.97 to 0.995 over three seeds at 1,500 steps (stride: 0.56 to 0.81), and
            # at 3,000 steps (7.8 min on 2 cores) R@1 0.90 / 0.94, shape 0.995, position 0.91 (docs/results.md,
            # CLIP, 2026-12-05, "Max-pool downsampling")
            "model": {"patch_size": 8, "vision_arch": "conv", "conv_norm": "batch", "conv_downsample": "maxpool"},
            "stage": {},
        },
        "gpu": {
            "train": {"batch_size": 512, "max_steps": 50_000, "checkpoint_every": 2000, "learning_rate": 5e-4},
            "model": {
                "embed_dim": 256, "text_width": 256, "text_layers": 6, "text_heads": 8, "vision_width": 256,
                "vision_layers": 6, "vision_heads": 8, "patch_size": 8, "eval_samples": 2000,
            },
            "stage": {},
        },
    },
    "prior": {
        "tiny": {
            "train": {"batch_size": 8, "max_steps": 4, "checkpoint_every": 2, "learning_rate": 1e-3},
            "model": {"embed_dim": 16, "text_width": 16, "max_text_len": 4, "num_layers": 2, "num_heads": 2,
                      "head_dim": 16, "sample_steps": 10},
            "stage": {"pool_size": 256, "eval_samples": 64, "ema_decay": 0.9},
        },
        "cpu": {
            "train": {"batch_size": 128, "max_steps": 600, "checkpoint_every": 200, "learning_rate": 5e-4},
            "model": {},
            "stage": {"pool_size": 10_000, "eval_samples": 500, "ema_decay": 0.999},
        },
        "gpu": {
            "train": {"batch_size": 512, "max_steps": 100_000, "checkpoint_every": 5000, "learning_rate": 1.1e-4},
            "model": {"embed_dim": 512, "text_width": 512, "max_text_len": 77, "num_layers": 12, "num_heads": 12,
                      "head_dim": 64, "sample_steps": 64},
            "stage": {"pool_size": 1_000_000, "eval_samples": 1000, "ema_decay": 0.9999},
        },
    },
    "decoder": {
        "tiny": {
            "train": {"batch_size": 8, "max_steps": 4, "checkpoint_every": 2, "learning_rate": 1e-3},
            "model": {
                "arch": "transformer",
                "net": {"width": 32, "depth": 1, "heads": 2, "patch_size": 4},
                "sample_steps": 4,
            },
            "stage": {"ema_decay": 0.9, "eval_samples": 8},
        },
        "cpu": {
            # measured on shapes (docs/results.md): this UNet forms coloured objects in 1,500 steps where the
            # faster patch Transformer still drew scattered blocks; lr 1e-3 beat 5e-4 at equal steps; 2,000
            # steps (about 33 minutes on 2 cores) keeps `train all` within the hour; Min-SNR-5 weighting
            # (Hang et al. 2023) improved FD, precision and recall at equal steps and time
            "train": {"batch_size": 32, "max_steps": 2000, "checkpoint_every": 250, "learning_rate": 1e-3},
            "model": {
                "arch": "unet",
                "net": {
                    "channels": [32, 64, 128],
                    "attention": [False, False, True],
                    "head_dim": 32,
                    "text_pool": True,
                    # the decoder's own 2-layer caption encoder over token ids (GLIDE's, as the paper's):
                    # the frozen CLIP text tower's token states barely tell shapes apart
                    # (benchmarks/caption_probe.py); it raised faithfulness (docs/results.md)
                    "caption_layers": 2,
                },
                "min_snr_gamma": 5.0,
            },
            "stage": {"ema_decay": 0.999, "eval_samples": 64},
        },
        "gpu": {
            "train": {"batch_size": 256, "max_steps": 200_000, "checkpoint_every": 5000, "learning_rate": 1e-4},
            # its own 4-layer caption encoder, as the paper's decoder and the cpu preset's (not measured on a GPU)
            "model": {
                "arch": "transformer",
                "net": {"width": 768, "depth": 12, "heads": 12, "patch_size": 4, "caption_layers": 4},
            },
            "stage": {"ema_decay": 0.9999, "eval_samples": 256},
        },
    },
    "upsampler": {
        "tiny": {
            "train": {"batch_size": 8, "max_steps": 4, "checkpoint_every": 2, "learning_rate": 1e-3},
            "model": {"arch": "unet", "net": {"channels": [16, 32], "attention": [False, False]}, "sample_steps": 3},
            "stage": {"ema_decay": 0.9, "eval_samples": 8},
        },
        "cpu": {
            "train": {"batch_size": 32, "max_steps": 1200, "checkpoint_every": 200, "learning_rate": 1e-3},
            "model": {
                "arch": "unet",
                "net": {"channels": [32, 64, 96], "attention": [False, False, False]},
                "sample_steps": 7,
            },
            "stage": {"ema_decay": 0.999, "eval_samples": 64},
        },
        "gpu": {
            "train": {"batch_size": 64, "max_steps": 100_000, "checkpoint_every": 5000, "learning_rate": 1e-4},
            "model": {
                "arch": "unet",
                "net": {"channels": [64, 128, 256, 256], "attention": [False, False, False, False]},
                "sample_steps": 7,
            },
            "stage": {"ema_decay": 0.9999, "eval_samples": 256},
        },
    },
    # tiny (tests), cpu (DF-GAN recipe sized for one CPU core), gpu, and article (the founding article's
    # dense-G / conv-D BCE recipe at 28x28, with the text fed to both networks; a GAN-only preset)
    "gan": {
        "tiny": {
            "train": {"batch_size": 8, "max_steps": 4, "checkpoint_every": 2, "learning_rate": 1e-3},
            "model": {"z_dim": 16, "g_width": 4, "d_width": 4, "max_mult": 4, "ma_gp_every": 1, "ema_decay": 0.9,
                      "eval_samples": 8, "sample_every": 2, "monitor_every": 2},
            "stage": {},
        },
        "cpu": {
            "train": {"batch_size": 64, "max_steps": 5000, "checkpoint_every": 500, "learning_rate": 2e-4},
            "model": {},
            "stage": {},
        },
        "gpu": {
            "train": {"batch_size": 128, "max_steps": 100_000, "checkpoint_every": 5000, "learning_rate": 1e-4,
                      "mixed_precision": "no"},
            "model": {"g_width": 32, "d_width": 32, "ma_gp_every": 1, "ema_decay": 0.9999, "eval_samples": 1000,
                      "sample_every": 2500, "monitor_every": 2500},
            "stage": {},
        },
        "article": {
            "base": "cpu",
            "data": {"resolution": 28},
            "train": {"batch_size": 64, "max_steps": 10_000, "checkpoint_every": 1000, "learning_rate": 2e-4},
            "model": {"arch": "article", "loss": "bce", "mismatch": False, "ma_gp": 0.0, "diffaugment": False,
                      "d_lr_scale": 1.0, "beta1": 0.5, "beta2": 0.999, "ema_decay": 0.0, "embed_scale": "none",
                      "minibatch_std": 0, "mode_seeking": 0.0, "sample_every": 500, "monitor_every": 500},
            "stage": {},
        },
    },
}  # fmt: skip
