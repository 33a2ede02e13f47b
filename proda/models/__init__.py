"""Models: ProDA's DeepLabv2, the warm-up discriminator, checkpoint I/O."""
from proda.models.checkpoint import (CheckpointError, build_model, infer_model_kwargs,
                                     load_checkpoint, load_imagenet, load_model_state, load_simclr,
                                     model_kwargs, save_checkpoint, unwrap)
from proda.models.deeplabv2 import BACKBONES, DeepLabV2, is_backbone_key, output_size
from proda.models.discriminator import FCDiscriminator

__all__ = ["BACKBONES", "CheckpointError", "DeepLabV2", "FCDiscriminator", "build_model",
           "infer_model_kwargs", "is_backbone_key", "load_checkpoint", "load_imagenet",
           "load_model_state", "load_simclr", "model_kwargs", "output_size", "save_checkpoint", "unwrap"]
