"""Math verification worker process: reads one JSON task per stdin line, answers one JSON line each.

Started and killed by ``rewards.math_answer``: the parent owns the wall clock, this process only
parses and verifies. A task is ``{"gold": str, "pred": str, "verifier": "module:fn" | null}``; the
reply ``{"ok": bool}`` or ``{"error": str}``.
"""

from __future__ import annotations

import functools
import json
import sys


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> list:
    from math_verify import parse

    return parse(text)


def default_verifier(gold: str, pred: str) -> bool:
    r"""math-verify on a gold answer and an extracted predicted answer (wrapped as ``\boxed{...}``,
    the form math-verify extracts most reliably; a gold already in ``$..$``/``\boxed`` stays as is).
    Parsed answers are cached: a group's completions share one gold answer."""
    from math_verify import verify

    parsed_gold = _parse(gold if ("$" in gold or "\\boxed" in gold) else "\\boxed{" + gold + "}")
    parsed_pred = _parse("\\boxed{" + pred + "}")
    return bool(parsed_gold) and bool(parsed_pred) and verify(parsed_gold, parsed_pred)


def main() -> None:
    out = sys.stdout
    try:
        default_verifier("1", "1")  # import math-verify and sympy before declaring ready
    except Exception as e:  # noqa: BLE001
        out.write(json.dumps({"fatal": f"math-verify unusable: {type(e).__name__}: {e}"}) + "\n")
        out.flush()
        return
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    verifiers = {None: default_verifier}
    for line in sys.stdin:
        try:
            task = json.loads(line)
            spec = task.get("verifier")
            if spec not in verifiers:
                from rewards.loading import import_object

                verifiers[spec] = import_object(spec)
            reply = {"ok": bool(verifiers[spec](task["gold"], task["pred"]))}
        except Exception as e:  # noqa: BLE001 - reported to the parent, which scores 0
            reply = {"error": f"{type(e).__name__}: {e}"[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
