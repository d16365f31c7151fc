"""One rank of the data-parallel tests (tests/training/test_distributed.py), run by torchrun.

Trains the demo network (at width 1/4) on a slice of the embedded MNIST subset through
``eqkern.train_vgg`` and writes, under ``--out``: ``weights-rank{r}.pt`` (the trained
parameters), ``saves-rank{r}.json`` (how many checkpoints this rank wrote), ``history-rank{r}.json``
and, when this rank failed or was interrupted, ``error-rank{r}.txt`` (its exception, one line).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--fail-rank", type=int, default=-1, help="this rank raises in its step ...")
    p.add_argument("--fail-batch", type=int, default=2, help="... at this batch (1-based)")
    p.add_argument("--interrupt-batch", type=int, default=0,
                   help="rank 0 gets a Ctrl-C (SIGINT) after this batch of epoch 1 (1-based)")
    args = p.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    out = Path(args.out)

    import eqkern
    from eqkern.training import checkpoint, steps

    saves = {"n": 0}
    real_save = checkpoint.save

    def counting_save(path, payload):
        saves["n"] += 1
        return real_save(path, payload)

    checkpoint.save = counting_save
    if args.fail_rank == rank:
        real_call, calls = steps.EPStep.__call__, {"n": 0}

        def failing_call(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == args.fail_batch:
                raise RuntimeError(f"injected failure on rank {rank}")
            return real_call(self, *a, **k)

        steps.EPStep.__call__ = failing_call

    def on_batch(epoch: int, batch: int) -> None:
        if rank == 0 and (epoch, batch + 1) == (0, args.interrupt_batch):
            os.kill(os.getpid(), signal.SIGINT)

    try:
        res = eqkern.train_vgg(
            "demo-mnist", width=1 / 4, epochs=args.epochs, train_size=96, test_size=40,
            batch_size=32, t_free=6, t_nudge=3, backend="torch", data_augmentation="crop_flip",
            estimator="random_sign", device="cpu", out_dir=out / "run", resume=args.resume,
            progress=False, log=lambda s: None, on_batch=on_batch)
    except (Exception, KeyboardInterrupt) as exc:  # the test reads what each rank saw
        (out / f"error-rank{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        return 3
    finally:
        (out / f"saves-rank{rank}.json").write_text(json.dumps(saves["n"]))
    torch.save({k: v.detach().clone() for k, v in res.model.state_dict().items()},
               out / f"weights-rank{rank}.pt")
    (out / f"history-rank{rank}.json").write_text(json.dumps(res.history))
    return 0


if __name__ == "__main__":
    sys.exit(main())
