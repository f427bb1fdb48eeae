"""How good is the embedded model as a test subject? Creation time, loss, replies, FP8 stability.

    .venv/bin/python bench/tiny_model_quality.py                  # the workspace's builtin:tiny-mistral
    .venv/bin/python bench/tiny_model_quality.py --fresh --json   # create it anew in a temporary workspace

Reports the creation time and final training loss (from tiny_model.json), greedy replies to a few
chats, and on held-out prompts (12 chats, a ~300-token long-context chat, 7 plain texts; none in the
corpus) over 32 greedy positions each: the top-1 agreement between the FP32 model and modelopt's FP8
fake-quantized model (FP8_DEFAULT_CFG, calibrated on the bundled corpus) teacher-forced on the FP32
continuation, and the mean max probability of the FP32 next-token distributions. Target: agreement
>= 99% (random weights give 80-92%).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", help="workspace root (default: $TRTBUILD_WORKSPACE or ~/.cache/trtbuild)")
    parser.add_argument("--fresh", action="store_true", help="create the model in a new temporary workspace")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--kv8", action="store_true", help="also quantize the KV cache (FP8_KV_CFG)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()


    from trtbuild.models import resolve_source
    from trtbuild.tiny_model import held_out_prompts, measure_quality, model_info
    from trtbuild.tokenizer import Tokenizer
    from trtbuild.workspace import Workspace

    ws = Workspace(tempfile.mkdtemp(prefix="tiny-quality-") if args.fresh else args.workspace)
    start = time.perf_counter()
    source = resolve_source(ws, "builtin:tiny-mistral", progress=not args.json)
    resolve_seconds = time.perf_counter() - start
    info = model_info(source.path)
    tokenizer = Tokenizer.from_model_dir(source.path)

    start = time.perf_counter()
    quality = measure_quality(source.path, held_out_prompts(tokenizer), args.new_tokens, kv_cache_fp8=args.kv8)
    measure_seconds = time.perf_counter() - start
    replies = {chat: tokenizer.decode(_until_eos(cont, tokenizer.eos_id))
               for chat, cont in zip(_chats(), quality.pop("continuations"))}
    result = {"model_dir": str(source.path), "recipe": info["recipe"], "creation_seconds": info["seconds"],
              "creation_cpu_seconds": info.get("cpu_seconds"), "final_loss": info["final_loss"],
              "resolve_seconds": round(resolve_seconds, 2), "measure_seconds": round(measure_seconds, 2),
              **quality, "replies": replies}
    if args.json:
        json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print(f"model        {source.path}")
        print(f"created in   {info['seconds']} s ({info.get('cpu_seconds')} s CPU), final loss {info['final_loss']}")
        print(f"FP8 top-1    {quality['fp8_top1_agreement']:.2%} of {quality['positions']} positions "
              f"({'kv8' if args.kv8 else 'fp8'}); {quality['fp8_top1_agreement_until_eos']:.2%} of the "
              f"{quality['reply_positions']} up to EOS; mean KL {quality['mean_kl_fp32_fp8']:.4f}")
        print(f"peakedness   mean max prob {quality['mean_max_prob']:.3f}, "
              f"{quality['share_max_prob_below_0.5']:.1%} of positions below 0.5, "
              f"median top-1 margin {quality['median_top1_margin']:.2f} logits")
        for chat, reply in replies.items():
            print(f"  {chat[:50]!r:54} -> {reply[:70]!r}")
    return 0


def _chats() -> list[str]:
    from trtbuild.tiny_model import HELD_OUT_CHATS, HELD_OUT_TEXTS, LONG_CONTEXT

    return HELD_OUT_CHATS + [LONG_CONTEXT[:40] + "..."] + HELD_OUT_TEXTS


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


if __name__ == "__main__":
    sys.exit(main())
