"""Run by tests/experiments/test_cli_classify.py under torchrun.

Trains a tiny classifier with DDP and saves each rank's first (averaged) gradient and its
weights as they are at the end of training (before the best checkpoint is reloaded, which
would make the ranks equal trivially)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from neuralode.experiments._run.distributed import World, unwrap
from neuralode.experiments._run.runs import RunDir
from neuralode.experiments._run.training import fit
from neuralode.experiments.classify.task import ClassifyConfig, ClassifyTask


class Capturing(ClassifyTask):
    def setup(self, world):
        super().setup(world)
        step, rank = self.optimizer.step, world.rank

        def step_and_save_first_gradient(*args, **kwargs):
            path = self.out / f"grad{rank}.pt"
            if not path.exists():  # DDP has averaged the gradients over the ranks by now
                grads = {n: p.grad.clone() for n, p in self.model.named_parameters()}
                torch.save(grads, path)
            return step(*args, **kwargs)

        self.optimizer.step = step_and_save_first_gradient

    def evaluate(self, model, split, world):
        if split == "val":  # the end of the (only) training epoch
            state = {k: v.clone() for k, v in unwrap(model).state_dict().items()}
            torch.save(state, self.out / f"rank{world.rank}.pt")
        return super().evaluate(model, split, world)


def main(out: Path, model: str) -> None:
    config = ClassifyConfig(
        dataset="digits", train_size=64, val_size=64, batch_size=32, width=8, epochs=1,
        model=model, tol=1e-2, augment=False, progress=False, out=out, device="cpu",
    )  # fmt: skip
    world = World.from_environment("cpu")
    run = RunDir(out)
    if world.is_main:
        run.prepare(config, resume=False)
        torch.manual_seed(config.seed)  # as fit() seeds before setup: the initial weights
        init = ClassifyTask(config)
        init.setup(World())
        torch.save(init.model.state_dict(), out / "init.pt")
    world.barrier()
    task = Capturing(config)
    task.out = out
    fit(task, run, world, config)
    world.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
