"""Training stages: one module per ``dalle2 train <stage>`` command (``clip_stage.py``, ...), each
gluing a model from ``dalle2.models`` to the shared :class:`~dalle2.training.trainer.Trainer`."""
