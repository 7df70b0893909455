"""MAE models. Importing this module registers every factory with timm."""
from .mae import (  # noqa: F401
    MaskedAutoencoderViT,
    mae_vit_base_patch16, mae_vit_base_patch16_dec512d8b,
    mae_vit_huge_patch14, mae_vit_huge_patch14_dec512d8b,
    mae_vit_large_patch16, mae_vit_large_patch16_dec512d8b,
    mae_vit_small_patch4, mae_vit_small_patch4_dec256d4b,
    mae_vit_tiny_patch8, mae_vit_tiny_patch8_dec128d2b,
)
from .masking import STRATEGIES, make_noise, random_masking  # noqa: F401
from .pos_embed import get_2d_sincos_pos_embed, resample_pos_embed  # noqa: F401
from .vit import (  # noqa: F401
    checkpoint_filter_fn, load_checkpoint,
    vit_base_patch16, vit_huge_patch14, vit_large_patch16, vit_small_patch4, vit_tiny_patch8,
)

# short (official alias) and full names of the pretraining models; the fine-tuning encoder of each
MAE_MODELS = {name: globals()[name] for name in (
    "mae_vit_tiny_patch8", "mae_vit_small_patch4", "mae_vit_base_patch16", "mae_vit_large_patch16",
    "mae_vit_huge_patch14")}
MAE_MODELS.update({f.__name__: f for f in list(MAE_MODELS.values())})
ENCODERS = {"mae_vit_tiny_patch8": vit_tiny_patch8, "mae_vit_small_patch4": vit_small_patch4,
            "mae_vit_base_patch16": vit_base_patch16, "mae_vit_large_patch16": vit_large_patch16,
            "mae_vit_huge_patch14": vit_huge_patch14}


def create_mae(name: str, **kwargs) -> MaskedAutoencoderViT:
    if name not in MAE_MODELS:
        raise ValueError(f"unknown MAE model {name!r}; choose one of {sorted(MAE_MODELS)}")
    return MAE_MODELS[name](**kwargs)
