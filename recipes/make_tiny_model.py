"""Build a tiny random-init model (DeepSeek-V2 or Qwen2 architecture, small BPE tokenizer) as an HF dir.

    python recipes/make_tiny_model.py --arch deepseek_v2 --size tiny --out out/tiny-deepseek_v2

The directory loads with transformers and with vLLM; no downloads. Presets: align/models.py PRESETS.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=["deepseek_v2", "qwen2"], default="deepseek_v2")
    parser.add_argument(
        "--size", choices=["tiny", "small"], default="tiny", help="tiny: <1M params; small: 13-17M"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)

    # Heavy imports after parsing, so --help answers at once.
    import math

    from safetensors import safe_open

    from align.models import make_tiny_model

    path = make_tiny_model(args.arch, args.size, args.out, seed=args.seed, dtype=args.dtype)
    n_params = 0
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            n_params += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    print(f"{args.arch}/{args.size}: {n_params:,} parameters")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
