#!/usr/bin/env python
"""Submit pretraining to Slurm (submitit); preempted jobs requeue and resume from checkpoint-last.

  python tools/submit_pretrain.py --nodes 8 --gpus 8 --partition learn \\
      --config configs/pretrain/mae_vit_large.py --data-path /datasets/imagenet/train
"""
import argparse

import _cli  # noqa: F401


def main():
    from mae_transfer.engine.config import apply_overrides, load_config
    from mae_transfer.engine.pretrain import PretrainConfig, train
    from mae_transfer.engine.slurm import submit

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(_cli.ROOT / "configs/pretrain/mae_vit_large.py"))
    p.add_argument("--data-path", required=True)
    p.add_argument("--output-dir", default=None)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--partition", default="")
    p.add_argument("--timeout-min", type=int, default=4320)
    p.add_argument("overrides", nargs="*")
    a = p.parse_intermixed_args()
    cfg = load_config(a.config, PretrainConfig)
    cfg = apply_overrides(cfg, [f"data_path={a.data_path}"] + ([f"output_dir={a.output_dir}"] if a.output_dir else [])
                          + a.overrides)
    job = submit(train, cfg, a.nodes, a.gpus, a.partition, a.timeout_min)
    print(f"submitted job {job.job_id}; logs in {cfg.output_dir}/slurm/{job.job_id}")


if __name__ == "__main__":
    _cli.run_cli(main)
