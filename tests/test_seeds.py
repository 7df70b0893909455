"""Every seed the grammar accepts trains: a real optimizer step at seeds across [0, 2**32), the ends included, for
pretraining (folder and shard sources) and fine-tuning; every seed is derived by `rng.derive_seed`, whose seeds
stay distinct where the old arithmetic repeated or overflowed."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mae_transfer.engine.config import apply_overrides, load_config, resolve_config, seed_arg
from mae_transfer.rng import derive_seed
from mae_transfer.schemas import SEED_MAX

# the ends of the range, the first seed the old micro-batch formula overflowed at (1829), and draws across it
SEEDS = st.one_of(st.sampled_from([0, 1829, 2024, SEED_MAX]), st.integers(0, SEED_MAX))
STEPS = settings(max_examples=6, deadline=None, derandomize=True, database=None)


def _pretrain_step(out, seed: int, *extra) -> dict:
    from mae_transfer.engine.pretrain import PretrainConfig, train

    cfg = apply_overrides(load_config(resolve_config("demo_tiny", "pretrain"), PretrainConfig),
                          [f"output_dir={out}", f"seed={seed}", "img_size=32", "demo_samples=8", "batch_size=8",
                           "effective_batch_size=8", "epochs=1", "warmup_epochs=0", "num_workers=0", "vis_freq=100",
                           "save_freq=100", *extra])
    metrics = {}
    train(cfg, metrics=metrics)
    return metrics


@given(seed=SEEDS)
@STEPS
@pytest.mark.slow
def test_a_pretraining_step_at_any_seed(tmp_path_factory, seed):
    metrics = _pretrain_step(tmp_path_factory.mktemp("run"), seed)
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for split, c, i in itertools.product(("train", "val"), ("a", "b"), range(4)):
        (root / split / c).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (60 * i, 90 if c == "a" else 200, 0)).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.parametrize("seed", [0, 1829, SEED_MAX])
@pytest.mark.slow
def test_a_finetuning_step_with_mixup_and_drop_path_at_any_seed(tmp_path, class_folder, seed):
    from mae_transfer.engine.finetune import ClassifyConfig, train

    cfg = apply_overrides(ClassifyConfig(), [
        f"output_dir={tmp_path}", f"data_path={class_folder}", f"seed={seed}", "model=vit_tiny_patch8", "img_size=32",
        "num_classes=2", "epochs=1", "batch_size=4", "effective_batch_size=4", "num_workers=0", "warmup_epochs=0",
        "max_steps=1", "mixup=0.8", "cutmix=1.0", "drop_path=0.1"])
    stats = train(cfg)
    assert stats is not None


def test_a_sharded_epoch_at_the_largest_seed(tmp_path):
    """ShardSampler's shard order and window shuffles come from the same function."""
    import numpy as np

    from mae_transfer.data.order import ShardSampler

    class Source:
        shards = [type("S", (), {"count": 10})() for _ in range(3)]
        offsets, window = [0, 10, 20, 30], 4

    for seed in (0, SEED_MAX):
        s = ShardSampler(Source(), seed=seed, batch_size=2, num_workers=2)
        s.set_epoch(3)
        seen = [i for _, i in s]
        assert sorted(seen) == list(range(30)) and seen != list(range(30))
    assert not np.array_equal(*[list(ShardSampler(Source(), seed=x, batch_size=2)) for x in (0, 1)])


def test_per_sample_seeds_are_distinct_past_2_to_the_32_and_across_epochs():
    big = range(2**32 - 500, 2**32 + 500)
    seeds = {derive_seed("sample", SEED_MAX, e, i) for e in range(3) for i in big}
    assert len(seeds) == 3 * len(big)
    assert all(0 <= s < 2**63 for s in seeds)
    # the old per-sample formula gave sample 10_000_019 of epoch 0 the crop and mask of sample 0 of epoch 1
    assert derive_seed("sample", 0, 0, 10_000_019) != derive_seed("sample", 0, 1, 0)
    # parts are encoded at a fixed width: (1, 23) and (12, 3) or a trailing zero never coincide
    assert len({derive_seed("sample", *p) for p in [(1, 23), (12, 3), (1, 23, 0), (123,)]}) == 4
    # one purpose's seeds are not another's
    assert derive_seed("sample", 5, 0, 0) != derive_seed("micro_batch", 5, 0, 0)
    with pytest.raises(ValueError):
        derive_seed("sample", -1)


def test_one_seed_range_for_every_parser(tmp_path, capsys):
    import argparse

    from mae_transfer.cli.shards import main as shards

    assert seed_arg(str(SEED_MAX)) == SEED_MAX
    with pytest.raises(argparse.ArgumentTypeError):
        seed_arg(str(SEED_MAX + 1))
    with pytest.raises(SystemExit) as e:
        shards([str(tmp_path), str(tmp_path / "out"), "--seed", str(SEED_MAX + 1)])
    assert e.value.code == 2 and "--seed" in capsys.readouterr().err
