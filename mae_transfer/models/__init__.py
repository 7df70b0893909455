"""MAE models. Importing this module registers every factory with timm, the one registry of names:
`timm.create_model('mae_vit_base_patch16')` (pretraining), `timm.create_model('vit_base_patch16')`
(fine-tuning encoder). Adding a size is one `@register_model` entry in mae.py and one in vit.py."""
import timm

from ..errors import ConfigError
from .mae import (  # noqa: F401
    MaskedAutoencoderViT,
    mae_vit_base_patch16,
    mae_vit_base_patch16_dec512d8b,
    mae_vit_huge_patch14,
    mae_vit_huge_patch14_dec512d8b,
    mae_vit_large_patch16,
    mae_vit_large_patch16_dec512d8b,
    mae_vit_small_patch4,
    mae_vit_small_patch4_dec256d4b,
    mae_vit_tiny_patch8,
    mae_vit_tiny_patch8_dec128d2b,
)
from .masking import STRATEGIES, make_noise, random_masking  # noqa: F401
from .pos_embed import get_2d_sincos_pos_embed, resample_pos_embed  # noqa: F401
from .vit import (  # noqa: F401
    checkpoint_filter_fn,
    load_checkpoint,
    vit_base_patch16,
    vit_huge_patch14,
    vit_large_patch16,
    vit_small_patch4,
    vit_tiny_patch8,
)


class UnknownModel(ConfigError):
    """A model name this toolkit does not register; the message lists the ones it does."""


_SIZES = ("depth", "embed_dim", "num_heads", "patch_size", "img_size", "decoder_depth", "decoder_embed_dim",
          "decoder_num_heads", "in_chans")


def _create(name: str, module: str, **kwargs):
    names = timm.list_models(module=module)  # this package's entries in timm's registry
    if name not in names:
        raise UnknownModel(f"unknown model {name!r}; choose one of {', '.join(names)}")
    sizes = {k: v for k, v in kwargs.items() if k in _SIZES}
    bad = [f"{k}={v!r}" for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise ConfigError(f"model_kwargs: {bad[0]} (a size is an integer >= 1)")
    try:
        model = timm.create_model(name, **kwargs)
    except TypeError as e:  # a keyword the model does not take: `model_kwargs={'foo': 1}`
        raise ConfigError(f"model_kwargs of {name}: {e}") from None
    # what the checkpoints record (nanoGPT's model_args): readers rebuild from it, never from shapes
    model.model_args = {"name": name, "kwargs": {k: v for k, v in kwargs.items() if k != "checkpoint"}}
    if getattr(model, "beit", None):  # built as timm's Beit for a BEiT checkpoint (models/vit.py)
        model.model_args["kwargs"]["beit"] = model.beit
    return model


def create_mae(name: str, **kwargs) -> MaskedAutoencoderViT:
    """A pretraining model by its registered name (short or full: mae_vit_base_patch16[_dec512d8b])."""
    return _create(name, "mae", **kwargs)


def create_encoder(name: str, **kwargs):
    """A fine-tuning encoder (timm VisionTransformer, official MAE layout) by its registered name."""
    return _create(name, "vit", **kwargs)
