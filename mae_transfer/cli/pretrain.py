"""`mae-transfer pretrain | submit-pretrain`: parse, build the config, call the engine."""
from pathlib import Path
from typing import List

from .. import outputs, results
from ..data.sources import input_paths
from ..engine.config import apply_overrides, load_config, resolve_config
from ..engine.pretrain import PretrainConfig, evaluate_checkpoint, train
from ..identify import check_backbone
from . import common

PRETRAIN_DOC = """MAE pretraining (the paper's recipe; configs: mae_vit_{base,large,huge}, demo_tiny, scenes_tiny).

  mae-transfer pretrain                                         # the CPU demo on embedded photos
  mae-transfer pretrain --config mae_vit_large --data-path /datasets/imagenet/train --num-gpus 8 epochs=1600
  mae-transfer pretrain --config mae_vit_giant --data-path /datasets/imagenet/train --num-gpus 8 --strategy fsdp
  mae-transfer pretrain --config mae_vit_large --data-path 'shards/in1k-{000000..001281}.tar' --num-gpus 8
  mae-transfer pretrain --config mae_vit_large --data-path ... --eval-only checkpoint-last.pth   # masked loss
"""

def pretrain(argv: List[str], prog: str = "mae-transfer pretrain"):
    p = common.parser(prog, PRETRAIN_DOC, "pretrain", "demo_tiny (mae_vit_large with --data-path)")
    common.add_data_path(p, "a folder of images (ImageFolder or flat), or shards: a brace pattern "
                            "'shards/train-{000000..001023}.tar', a folder of .tar / .parquet files, a .txt list of "
                            "URLs (pipe:, s3://, https://), an HF save_to_disk folder (default: the demo photos)")
    common.add_strategy(p)
    a = common.parse(p, argv)
    path = resolve_config(a.config or ("demo_tiny" if a.data_path is None else "mae_vit_large"), "pretrain")
    cfg = load_config(path, PretrainConfig)
    cfg = apply_overrides(cfg, common.flag_overrides(a, ("data_path", "output_dir", "seed", "strategy"))
                          + (["resume=auto"] if a.resume else []) + a.overrides)
    out = Path(cfg.output_dir)
    if a.eval_only:
        # unreadable, unsafe, foreign or without the decoder the masked loss needs: one line before anything is written
        check_backbone(a.eval_only, ("mae",), "pretrain --eval-only")
        run = results.settings(path, cfg.seed, results.model_name(cfg), a.eval_only, [cfg.data_path],
                               results.recipe(cfg))
        with outputs.claim(out, a.resume, run, a.allow_changes, inputs=input_paths(cfg.data_path)), \
                results.recorded("pretrain", out, path, cfg.seed, a.eval_only) as rec:
            rec.metrics.update(evaluate_checkpoint(cfg, a.eval_only))
        print(f"masked-patch loss {rec.metrics['loss']:.4f} over {int(rec.metrics['images'])} images "
              f"(result: {out / results.NAME})")
        return rec.metrics
    run = results.settings(path, cfg.seed, results.model_name(cfg), data=[cfg.data_path], recipe=results.recipe(cfg))
    # every shard a list file or pattern names is an input: no checkpoint lands in (or beside) the data
    with outputs.claim(out, a.resume or cfg.resume != "none", run, a.allow_changes, inputs=input_paths(cfg.data_path)):
        common.relaunch_under_torchrun("pretrain", argv, a.num_gpus, out)
        with results.recorded("pretrain", out, path, cfg.seed) as rec:
            train(cfg, metrics=rec.metrics)
            rec.checkpoint = out / "checkpoint-last.pth"
    if common.main_process():
        print(f"checkpoint: {out / 'checkpoint-last.pth'}\nloss curve: {out / 'loss_curve.png'}\n"
              f"reconstructions: {out / 'reconstructions.png'}\nresult: {out / results.NAME}\n"
              f"logs: {out / 'log.txt'} (JSON lines), tensorboard --logdir {out / 'tensorboard'}")
    return rec.metrics


def submit_pretrain(argv: List[str], prog: str = "mae-transfer submit-pretrain"):
    """Pretraining on Slurm (submitit); preempted jobs requeue and resume from checkpoint-last."""
    from ..engine.slurm import submit  # submitit: an optional host, imported when asked for

    p = common.parser(prog, "Submit pretraining to Slurm (submitit); preempted jobs requeue and resume.\n\n"
                      "  mae-transfer submit-pretrain --nodes 8 --gpus 8 --partition learn --config mae_vit_large "
                      "--data-path /datasets/imagenet/train", "pretrain", "mae_vit_large", eval_only=False)
    common.add_data_path(p, "a folder of images, or shards (see `mae-transfer pretrain --help`)")
    common.add_strategy(p)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--partition", default="")
    p.add_argument("--timeout-min", type=int, default=4320)
    a = common.parse(p, argv)
    if not a.data_path:
        p.error("--data-path is required")
    cfg = load_config(resolve_config(a.config or "mae_vit_large", "pretrain"), PretrainConfig)
    cfg = apply_overrides(cfg, common.flag_overrides(a, ("data_path", "output_dir", "seed", "strategy"))
                          + (["resume=auto"] if a.resume else []) + a.overrides)
    outputs.check_fresh(cfg.output_dir, a.resume)
    job = submit(train, cfg, a.nodes, a.gpus, a.partition, a.timeout_min)
    print(f"submitted job {job.job_id}; logs in {cfg.output_dir}/slurm/{job.job_id}")
