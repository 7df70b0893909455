from .images import (  # noqa: F401
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    EpochSampler,
    ImageDataset,
    LabelledImageFolder,
    SeededSamples,
    collate_skip_bad,
    demo_photos,
    pretrain_transform,
)
