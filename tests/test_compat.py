"""Host-library patches: applied only on the versions they were written for, and said in the log."""
import logging

from PIL import Image

from mae_transfer import env
from mae_transfer.data import compat


def test_posterize_patch_is_version_gated_and_logged(monkeypatch, caplog):
    from timm.data import auto_augment

    fresh = {n: auto_augment.posterize for n in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")}
    monkeypatch.setattr(auto_augment, "NAME_TO_OP", {**auto_augment.NAME_TO_OP, **fresh})  # as timm ships it
    monkeypatch.setattr(env, "_applied", set())
    real = env.version_tuple
    monkeypatch.setattr(compat, "version_tuple", lambda d: (2, 0, 0) if d == "timm" else real(d))
    compat.patch_timm_posterize()  # a timm it was not written for: left alone
    assert auto_augment.NAME_TO_OP["PosterizeIncreasing"] is auto_augment.posterize
    monkeypatch.setattr(compat, "version_tuple", real)
    logger = logging.getLogger("mae_transfer")
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.INFO, logger="mae_transfer"):
        compat.patch_timm_posterize()
    op = auto_augment.NAME_TO_OP["PosterizeIncreasing"]
    assert op is not auto_augment.posterize
    assert op(Image.new("RGB", (4, 4), (200, 100, 50)), 0).getextrema() == ((0, 0),) * 3
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("compat: timm")]


def test_version_tuple():
    assert env.version_tuple("torch")[:1] >= (2,) and env.version_tuple("no-such-dist-xyz") == ()
