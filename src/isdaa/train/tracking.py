"""Optional experiment trackers (TensorBoard, W&B), imported lazily; metrics.jsonl is always written."""

from __future__ import annotations

from pathlib import Path


class Trackers:
    def __init__(self, names, out_dir, config: dict, run_name=None):
        self.tb = self.wandb = None
        for name in names:
            if name == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as err:
                    raise ImportError("report_to: tensorboard needs `pip install tensorboard`") from err
                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            elif name == "wandb":
                try:
                    import wandb
                except ImportError as err:
                    raise ImportError("report_to: wandb needs `pip install wandb`") from err
                self.wandb = wandb.init(name=run_name or Path(out_dir).name, config=config, dir=str(out_dir))

    def log(self, record: dict, step: int) -> None:
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
