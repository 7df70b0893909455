"""Slurm through submitit. A preempted or timed-out job is requeued and *resumes*: the requeued job
runs the same config with resume=auto, which finds <output_dir>/checkpoint-last.pth (the official
submitit script looked for a `checkpoint.pth` that was never written and restarted from scratch)."""
import dataclasses


class SlurmJob:
    def __init__(self, train_fn, cfg):
        self.train_fn, self.cfg = train_fn, cfg

    def __call__(self):
        import submitit  # an optional host (the slurm extra)

        submitit.helpers.TorchDistributedEnvironment().export()  # RANK, WORLD_SIZE, MASTER_ADDR, ...
        return self.train_fn(self.cfg)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on preemption / timeout: requeue the same job, resuming."""
        import submitit  # an optional host (the slurm extra)

        return submitit.helpers.DelayedSubmission(SlurmJob(self.train_fn, dataclasses.replace(self.cfg, resume="auto")))


def submit(train_fn, cfg, nodes: int, gpus_per_node: int, partition: str = "", timeout_min: int = 4320,
           folder: str = None, **slurm):
    import submitit  # an optional host (the slurm extra)

    folder = folder or f"{cfg.output_dir}/slurm/%j"
    ex = submitit.AutoExecutor(folder=folder, slurm_max_num_timeout=30)
    ex.update_parameters(nodes=nodes, gpus_per_node=gpus_per_node, tasks_per_node=gpus_per_node,
                         cpus_per_task=10, timeout_min=timeout_min, slurm_signal_delay_s=120,
                         name="mae_transfer", **({"slurm_partition": partition} if partition else {}),
                         **{f"slurm_{k}": v for k, v in slurm.items()})
    return ex.submit(SlurmJob(train_fn, cfg))
