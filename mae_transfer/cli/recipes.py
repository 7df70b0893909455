"""`mae-transfer pretrain | finetune | linprobe | submit-pretrain`: parse, build the config, call the engine."""
from pathlib import Path
from typing import List

from .. import outputs, results
from ..engine.config import ConfigError, apply_overrides, load_config, resolve_config
from . import common

PRETRAIN_DOC = """MAE pretraining (the paper's recipe; configs: mae_vit_{base,large,huge}, demo_tiny, scenes_tiny).

  mae-transfer pretrain                                         # the CPU demo on embedded photos
  mae-transfer pretrain --config mae_vit_large --data-path /datasets/imagenet/train --num-gpus 8 epochs=1600
  mae-transfer pretrain --config mae_vit_large --data-path ... --eval-only checkpoint-last.pth   # masked loss
"""

CLASSIFY_DOC = {
    "finetune": """ImageNet fine-tuning (and partial fine-tuning) of an MAE encoder (configs: vit_{base,large,huge}).

  mae-transfer finetune --config vit_large --backbone mae_pretrain_vit_large.pth --data-path /data/imagenet \\
      --num-gpus 8                                           # <data-path>/{train,val}/<class>/*
  mae-transfer finetune --config vit_base --backbone X.pth --finetune-last-k 4        # paper Fig. 9
  mae-transfer finetune --config vit_base --eval-only output/finetune/vit_base/checkpoint-last.pth
""",
    "linprobe": """Linear probing of an MAE encoder (frozen trunk, BatchNorm + linear head on the cls token, LARS).

  mae-transfer linprobe --config vit_base --backbone mae_pretrain_vit_base.pth --data-path /data/imagenet
""",
}


def _model(cfg) -> str:
    return cfg.model + (f" {cfg.model_kwargs}" if cfg.model_kwargs else "")


def pretrain(argv: List[str], prog: str = "mae-transfer pretrain"):
    from ..engine.pretrain import PretrainConfig, evaluate_checkpoint, train

    p = common.parser(prog, PRETRAIN_DOC, "pretrain", "demo_tiny (mae_vit_large with --data-path)")
    common.add_data_path(p, "ImageFolder tree, flat folder of images, a .tar or a folder of .tar shards "
                            "(default: the embedded demo photos)")
    a = common.parse(p, argv)
    path = resolve_config(a.config or ("demo_tiny" if a.data_path is None else "mae_vit_large"), "pretrain")
    cfg = load_config(path, PretrainConfig)
    cfg = apply_overrides(cfg, common.flag_overrides(a, ("data_path", "output_dir", "seed"))
                          + (["resume=auto"] if a.resume else []) + a.overrides)
    out = Path(cfg.output_dir)
    if a.eval_only:
        from ..identify import read_backbone

        # unreadable, unsafe, foreign or without the decoder the masked loss needs: one line before anything is written
        read_backbone(a.eval_only, ("mae",), "pretrain --eval-only")
        run = results.settings(path, cfg.seed, _model(cfg), a.eval_only, [cfg.data_path])
        with outputs.claim(out, a.resume, run, a.allow_changes), \
                results.recorded("pretrain", out, path, cfg.seed, a.eval_only) as rec:
            rec.metrics.update(evaluate_checkpoint(cfg, a.eval_only))
        print(f"masked-patch loss {rec.metrics['loss']:.4f} over {int(rec.metrics['images'])} images "
              f"(result: {out / results.NAME})")
        return rec.metrics
    run = results.settings(path, cfg.seed, _model(cfg), data=[cfg.data_path])
    with outputs.claim(out, a.resume or cfg.resume != "none", run, a.allow_changes):
        common.relaunch_under_torchrun("pretrain", argv, a.num_gpus, out)
        with results.recorded("pretrain", out, path, cfg.seed) as rec:
            train(cfg, metrics=rec.metrics)
            rec.checkpoint = out / "checkpoint-last.pth"
    print(f"checkpoint: {out / 'checkpoint-last.pth'}\nloss curve: {out / 'loss_curve.png'}\n"
          f"reconstructions: {out / 'reconstructions.png'}\nresult: {out / results.NAME}\n"
          f"logs: {out / 'log.txt'} (JSON lines), tensorboard --logdir {out / 'tensorboard'}")
    return rec.metrics


def classify(mode: str, argv: List[str], prog: str):
    from ..engine.classify import ClassifyConfig, train

    p = common.parser(prog, CLASSIFY_DOC[mode], mode, "vit_base")
    p.add_argument("--backbone", "--finetune", dest="finetune", metavar="CKPT",
                   help="pretrained checkpoint (any MAE format; none: random init)")
    common.add_data_path(p, "<data-path>/{train,val}/<class>/<image>")
    p.add_argument("--img-size", type=int, help="input size (the position table is resampled)")
    if mode == "finetune":
        p.add_argument("--finetune-last-k", type=int, metavar="K", help="train only the last K blocks and the head")
    a = common.parse(p, argv)
    path = resolve_config(a.config or "vit_base", mode)
    cfg = load_config(path, ClassifyConfig)
    flags = ("finetune", "data_path", "output_dir", "seed", "img_size", "finetune_last_k", "eval_only")
    cfg = apply_overrides(cfg, common.flag_overrides(a, flags) + (["resume=auto"] if a.resume else []) + a.overrides)
    if cfg.mode != mode:
        raise ConfigError(f"{path} is a {cfg.mode} config (mode={cfg.mode}); use `mae-transfer {cfg.mode}` "
                          f"or a {mode} config")
    from ..identify import BACKBONES, read_backbone

    # unreadable, unsafe, foreign or the wrong kind: one line now, before data and model
    if cfg.finetune:
        read_backbone(cfg.finetune, BACKBONES[:-2], f"{mode} --backbone")
    if cfg.eval_only:
        read_backbone(cfg.eval_only, ("classifier",), f"{mode} --eval-only")
    out = Path(cfg.output_dir)
    run = results.settings(path, cfg.seed, _model(cfg), cfg.eval_only or cfg.finetune, [cfg.data_path])
    with outputs.claim(out, a.resume or cfg.resume != "none", run, a.allow_changes):
        common.relaunch_under_torchrun(mode, argv, a.num_gpus, out)
        with results.recorded(mode, out, path, cfg.seed, cfg.eval_only or cfg.finetune) as rec:
            stats = train(cfg)
            rec.metrics.update({"top-1": stats.get("acc1"), "top-5": stats.get("acc5")})
    print(f"top-1 {stats.get('acc1', float('nan')):.2f}  top-5 {stats.get('acc5', float('nan')):.2f}  "
          f"(result: {out / results.NAME})")
    return rec.metrics


def finetune(argv: List[str], prog: str = "mae-transfer finetune"):
    return classify("finetune", argv, prog)


def linprobe(argv: List[str], prog: str = "mae-transfer linprobe"):
    return classify("linprobe", argv, prog)


def submit_pretrain(argv: List[str], prog: str = "mae-transfer submit-pretrain"):
    """Pretraining on Slurm (submitit); preempted jobs requeue and resume from checkpoint-last."""
    from ..engine.pretrain import PretrainConfig, train
    from ..engine.slurm import submit

    p = common.parser(prog, "Submit pretraining to Slurm (submitit); preempted jobs requeue and resume.\n\n"
                      "  mae-transfer submit-pretrain --nodes 8 --gpus 8 --partition learn --config mae_vit_large "
                      "--data-path /datasets/imagenet/train", "pretrain", "mae_vit_large", eval_only=False)
    common.add_data_path(p, "ImageFolder tree, flat folder, .tar or folder of .tar shards")
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--partition", default="")
    p.add_argument("--timeout-min", type=int, default=4320)
    a = common.parse(p, argv)
    if not a.data_path:
        p.error("--data-path is required")
    cfg = load_config(resolve_config(a.config or "mae_vit_large", "pretrain"), PretrainConfig)
    cfg = apply_overrides(cfg, common.flag_overrides(a, ("data_path", "output_dir", "seed"))
                          + (["resume=auto"] if a.resume else []) + a.overrides)
    outputs.check_fresh(cfg.output_dir, a.resume)
    job = submit(train, cfg, a.nodes, a.gpus, a.partition, a.timeout_min)
    print(f"submitted job {job.job_id}; logs in {cfg.output_dir}/slurm/{job.job_id}")
