"""Generate the synthetic tasks (math, code, helpful, safety, chat) as JSONL files.

    python recipes/make_data.py --config recipes/configs/tiny/data.yaml [key=value ...]

Writes <output_dir>/<task>/{train,eval}.jsonl and the resolved <output_dir>/config.yaml. The same
seed gives byte-identical files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from align import config
from align.configs import MakeDataConfig


def main(argv: list[str] | None = None) -> int:
    cfg = config.parse_args(MakeDataConfig, argv, description=__doc__)

    from align import tasks  # after parsing, so --help stays instant

    out_dir = Path(cfg.output_dir)
    try:
        counts = tasks.write_tasks(cfg, out_dir)
    except tasks.TaskSizeError as e:
        print(f"make_data: {e}", file=sys.stderr)
        return 2
    config.save(cfg, out_dir / "config.yaml")

    for name, n in counts.items():
        print(f"{name:8s} train={n['train']:6d}  eval={n['eval']:5d}  {out_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
