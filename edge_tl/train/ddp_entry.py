"""The worker entry point of a distributed fine-tune.

``edge-tl finetune --nproc-per-node N`` starts it through torchrun with ``--config FILE``
(the run's settings as JSON). Under your own launcher run the command itself, which reads
its rank from the environment torchrun sets::

    torchrun --nproc-per-node 4 -m edge_tl finetune --data DIR --out RUN --epochs 10

Given ``edge-tl finetune`` options instead of ``--config``, this module becomes that command
(``python -m edge_tl finetune ...`` in the same process), so launch scripts written for
``-m edge_tl.train.ddp_entry --data DIR ...`` keep working while the training package stays
below the CLI.
"""

from __future__ import annotations

import json
import os
import sys

from edge_tl.errors import EdgeTLError


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "--config":
        from edge_tl.train.config import FinetuneConfig
        from edge_tl.train.loop import finetune

        try:
            with open(argv[1], encoding="utf-8") as fh:
                config = FinetuneConfig.from_dict(json.load(fh))
            finetune(config)
        except EdgeTLError as exc:
            # One clear line per failing rank; torchrun then stops the others and the
            # launching command reports which rank failed.
            print(f"Error (rank {os.environ.get('RANK', '0')}): {exc}", file=sys.stderr)
            sys.exit(1)
        return
    # exec keeps the process torchrun started (pid, environment, stdio, exit status).
    os.execv(sys.executable, [sys.executable, "-m", "edge_tl", "finetune", *argv])


if __name__ == "__main__":
    main()
