"""`mae-transfer finetune | linprobe`: parse, build the config, call the engine."""
from pathlib import Path
from typing import List

from .. import outputs, results
from ..data.sources import input_paths
from ..engine.config import ConfigError, apply_overrides, load_config, resolve_config
from ..engine.finetune import ClassifyConfig, train
from ..identify import BACKBONES, check_backbone
from . import common

DOC = {
    "finetune": """ImageNet fine-tuning (and partial fine-tuning) of an MAE encoder (configs: vit_{base,large,huge}).

  mae-transfer finetune --config vit_large --backbone mae_pretrain_vit_large.pth --data-path /data/imagenet \\
      --num-gpus 8                                           # <data-path>/{train,val}/<class>/*
  mae-transfer finetune --config vit_base --backbone X.pth --finetune-last-k 4        # paper Fig. 9
  mae-transfer finetune --config vit_base --eval-only output/finetune/vit_base/checkpoint-last.pth \\
      --data-path /data/imagenet --output-dir output/finetune/vit_base-eval
""",
    "linprobe": """Linear probing of an MAE encoder (frozen trunk, BatchNorm + linear head on the cls token, LARS).

  mae-transfer linprobe --config vit_base --backbone mae_pretrain_vit_base.pth --data-path /data/imagenet
""",
}


def classify(mode: str, argv: List[str], prog: str):
    p = common.parser(prog, DOC[mode], mode, "vit_base")
    p.add_argument("--backbone", "--finetune", dest="finetune", metavar="CKPT",
                   help="pretrained checkpoint (any MAE format; none: random init)")
    common.add_data_path(p, "<data-path>/{train,val}: class folders (<class>/<image>) or shards with .cls labels")
    p.add_argument("--img-size", type=int, help="input size (the position table is resampled)")
    if mode == "finetune":
        p.add_argument("--finetune-last-k", type=int, metavar="K", help="train only the last K blocks and the head")
    common.add_strategy(p)
    a = common.parse(p, argv)
    path = resolve_config(a.config or "vit_base", mode)
    cfg = load_config(path, ClassifyConfig)
    flags = ("finetune", "data_path", "output_dir", "seed", "img_size", "finetune_last_k", "eval_only", "strategy")
    cfg = apply_overrides(cfg, common.flag_overrides(a, flags) + (["resume=auto"] if a.resume else []) + a.overrides)
    if cfg.mode != mode:
        raise ConfigError(f"{path} is a {cfg.mode} config (mode={cfg.mode}); use `mae-transfer {cfg.mode}` "
                          f"or a {mode} config")
    # unreadable, unsafe, foreign or the wrong kind: one line now, before data and model -- in the launcher,
    # not again in each of the processes it starts
    if cfg.finetune and not common.launcher_checked(mode, argv):
        check_backbone(cfg.finetune, BACKBONES[:-2], f"{mode} --backbone")
    if cfg.eval_only and not common.launcher_checked(mode, argv):
        check_backbone(cfg.eval_only, ("classifier",), f"{mode} --eval-only")
    out = Path(cfg.output_dir)
    run = results.settings(path, cfg.seed, results.model_name(cfg), cfg.eval_only or cfg.finetune, [cfg.data_path],
                           results.recipe(cfg))
    with outputs.claim(out, a.resume or cfg.resume != "none", run, a.allow_changes, inputs=input_paths(cfg.data_path)):
        common.relaunch_under_torchrun(mode, argv, a.num_gpus, out)
        with results.recorded(mode, out, path, cfg.seed, cfg.eval_only or cfg.finetune) as rec:
            stats = train(cfg)
            rec.metrics.update({"top-1": stats.get("acc1"), "top-5": stats.get("acc5")})
    if common.main_process() and "acc1" not in stats:  # resumed after its last epoch: result.json keeps what it was
        print(f"no evaluation in this run (its {cfg.epochs} epochs were done already, or max_steps stopped it "
              f"first); result: {out / results.NAME}")
    elif common.main_process():
        print(f"top-1 {stats.get('acc1', float('nan')):.2f}  top-5 {stats.get('acc5', float('nan')):.2f}  "
              f"(result: {out / results.NAME})")
    return rec.metrics


def finetune(argv: List[str], prog: str = "mae-transfer finetune"):
    return classify("finetune", argv, prog)


def linprobe(argv: List[str], prog: str = "mae-transfer linprobe"):
    return classify("linprobe", argv, prog)
