"""The embedded model `builtin:tiny-mistral`: a small MistralForCausalLM trained at creation time.

Why trained, not random: with random weights the next-token distributions are nearly flat, and FP8
fake-quant flips the greedy token 8-20% of the time, so validating an FP8 engine against the reference
would measure noise. About 45 s of training (one core) on the bundled corpus (trtbuild/data) makes the model
confident: greedy decoding is then stable under FP8/FP16 rounding and its chat replies are recognisable
("What is the capital of France?" -> "Paris is the capital of France.").

Why it trains fast on 2 CPU cores: the vocabulary is 32768 (the real v3 tokenizer), but the corpus uses
about 1.4k distinct tokens. Every other token shares one trained lm_head row, so their softmax mass is
exactly exp(log(#unused) + h . row): the loss is the exact full-vocabulary cross-entropy with 1.4k + 1
output columns instead of 32768. (Rows left at zero would force every useful logit above log(31k) = 10.4;
the trained row lets them sit lower, and FP8 noise grows with the logits' size: margin noise 0.28 vs 0.33.)
Small batches, many steps: at a fixed compute budget the number of updates is what makes a tiny model
confident (2 layers x 600 steps of 4 x 128 tokens: loss 0.09; 4 layers x 150 steps of 6 x 256: 0.93).
Document-masked windows: a window packs several documents, and each token sees only its own document,
from position 0, as it will when served. Per step of compute this memorises far more: 400 steps recall
165 of the corpus's 177 chat replies exactly, against 132 for 600 steps of plain causal windows.
The forward is trtbuild.runtime.mistral's (the one the torch runtime serves; transformers' modules give
bit-identical activations here), initialised and saved through transformers' MistralForCausalLM.

Deterministic: fixed seed, fixed thread count, fixed step count; the same machine and library versions
give byte-identical weights (tests hash two creations). The cache directory name hashes the recipe, the
training code, the corpus and the torch/transformers versions, so any change makes a new model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trtbuild.manifest import canonical_hash, library_versions
from trtbuild.workspace import Workspace, atomic_write_json

NAME = "builtin:tiny-mistral"
TOKENIZER_FILE = "tokenizer.model.v3"
INFO_FILE = "tiny_model.json"  # how it was made: recipe, loss, creation time


@dataclass(frozen=True)
class TinyRecipe:
    """Architecture and training schedule. Any change gives a new cache directory."""

    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2  # at a fixed budget, 2 layers x 600 steps beat 4 layers x 300 (loss 0.09 vs 0.76)
    num_attention_heads: int = 8
    num_key_value_heads: int = 2  # GQA like the 7B (32 / 8)
    max_position_embeddings: int = 2048
    seq_len: int = 128  # training windows, each starting at a document's BOS (the longest chats, tool calls,
    # are 95-99 tokens). 104 or 112 cost 16% / 9% less but memorised fewer corpus replies (116, 93 of 177 vs 132)
    batch_size: int = 4  # small batches, many steps: more updates per second of CPU
    steps: int = 400  # document-masked: 400 / 450 / 600 steps recall 165 / 169 / 170 of 177 corpus replies
    lr: float = 4e-3
    warmup_steps: int = 10
    seed: int = 0
    threads: int = 1  # fixed: the float reduction order (hence the weights) depends on it; 1 is also
    # the fastest on a busy 2-core machine (more OpenMP threads than free cores spin and crawl)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cache_key(recipe: TinyRecipe) -> str:
    from trtbuild.data import corpus_hash, encode_sample

    versions = library_versions()
    # The training code too: a change to it changes the weights even when the recipe stays the same
    # (only the code that makes the weights: editing measure_quality must not rebuild every engine).
    # encode_sample turns the corpus into token ids (tools and tool calls included): it is training code.
    from trtbuild.runtime import mistral

    makers = (mistral_config, create_tiny_model, _train, _document_windows, encode_sample, mistral)
    code = hashlib.sha256("".join(inspect.getsource(f) for f in makers).encode()).hexdigest()
    return canonical_hash({"recipe": recipe.to_dict(), "corpus": corpus_hash(), "code": code,
                           "torch": versions["torch"], "transformers": versions["transformers"]})[:16]


def ensure_tiny_model(ws: Workspace, recipe: TinyRecipe = TinyRecipe(), progress: bool = True) -> Path:
    """The model directory, created (atomically) on first use and reused afterwards."""
    final = ws.models_dir / f"tiny-mistral-{cache_key(recipe)}"
    if (final / INFO_FILE).is_file():
        return final
    with ws.atomic_dir(final) as tmp:
        create_tiny_model(tmp, recipe, progress=progress)
    return final


def mistral_config(recipe: TinyRecipe):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=32768, hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers, num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        head_dim=recipe.hidden_size // recipe.num_attention_heads,
        max_position_embeddings=recipe.max_position_embeddings, rope_theta=1e6, sliding_window=None,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, dtype="float32")


def create_tiny_model(out_dir: Path, recipe: TinyRecipe = TinyRecipe(), progress: bool = True) -> dict:
    """Build, train and save the model into out_dir (config.json, model.safetensors, tokenizer)."""
    import transformers

    from trtbuild.data import corpus_hash, corpus_samples, encode_sample
    from trtbuild.runtime.mistral import MistralConfig, MistralForCausalLM
    from trtbuild.tokenizer import Tokenizer

    start, cpu_start = time.perf_counter(), time.process_time()
    tokenizer = Tokenizer.v3()
    # Every document ends with EOS, as in pretraining: plain text too, so completions can finish.
    documents = [ids if ids[-1] == tokenizer.eos_id else ids + [tokenizer.eos_id]
                 for ids in (encode_sample(tokenizer, s) for s in corpus_samples())]
    with _deterministic(recipe):
        hf_model = transformers.MistralForCausalLM(mistral_config(recipe))  # its initialisation, its file format
        model = MistralForCausalLM(MistralConfig.from_dict(hf_model.config.to_dict()))
        model.load_state_dict(hf_model.state_dict())
        losses = _train(model, documents, recipe, progress)
        hf_model.load_state_dict(model.state_dict())
        hf_model.save_pretrained(out_dir, safe_serialization=True)
    _copy_tokenizer(out_dir)
    info = {"name": NAME, "recipe": recipe.to_dict(), "corpus_sha256": corpus_hash(),
            "corpus_tokens": sum(map(len, documents)), "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
            "loss_curve": [round(x, 4) for x in losses[:: max(1, len(losses) // 10)]],
            "seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(time.process_time() - cpu_start, 2),
            "versions": library_versions()}
    atomic_write_json(Path(out_dir) / INFO_FILE, info)
    return info


def _train(model, documents: list[list[int]], recipe: TinyRecipe, progress: bool) -> list[float]:
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    # Remap the corpus to its active vocabulary; train small embedding / lm_head tables for it.
    active = sorted({t for doc in documents for t in doc})
    index = {t: i for i, t in enumerate(active)}
    vocab = model.config.vocab_size
    windows = _document_windows([[index[t] for t in doc] for doc in documents], recipe.seq_len)
    active_ids = torch.tensor(active)
    embed = torch.nn.Parameter(model.model.embed_tokens.weight.detach()[active_ids].clone())
    head = torch.nn.Parameter(model.lm_head.weight.detach()[active_ids].clone())
    # Every unused token shares one trained lm_head row, so their logsumexp is exactly
    # log(#unused) + h . others_row: one extra column instead of 31k.
    others_row = torch.nn.Parameter(torch.zeros(model.config.hidden_size))
    log_unused = math.log(vocab - len(active))

    body = [p for n, p in model.model.named_parameters() if "embed_tokens" not in n]
    optimizer = torch.optim.AdamW([{"params": body}, {"params": [embed, head, others_row], "weight_decay": 0.0}],
                                  lr=recipe.lr, betas=(0.9, 0.95), weight_decay=0.01,
                                  fused=True)  # one kernel per step instead of a dozen per tensor: -15% step time
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / recipe.warmup_steps)
                                                 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))))
    generator = torch.Generator().manual_seed(recipe.seed)
    losses = []
    model.train()
    bar = tqdm(range(recipe.steps), desc="training tiny-mistral", disable=not progress, unit="step")
    for _ in bar:
        tokens, positions, mask = windows(torch.randint(windows.count, (recipe.batch_size,), generator=generator))
        hidden = model.model(embed[tokens[:, :-1]], positions, mask)
        logits = torch.cat([hidden @ head.T, log_unused + hidden @ others_row[:, None]], dim=-1)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(body + [embed, head, others_row], 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    with torch.no_grad():  # write the trained rows back
        model.model.embed_tokens.weight[active_ids] = embed.detach()
        model.lm_head.weight[:] = others_row.detach()
        model.lm_head.weight[active_ids] = head.detach()
    return losses


def _document_windows(documents: list[list[int]], seq_len: int):
    """Training windows over the concatenated documents, each starting at a document's first token:
    windows(picks) -> tokens [B, seq_len + 1], positions [B, seq_len] (restarting at 0 in each document)
    and the attention mask [B, 1, seq_len, seq_len] (causal, within a document only)."""
    import torch

    stream = torch.tensor([t for doc in documents for t in doc])
    doc_of = torch.cat([torch.full((len(doc),), i) for i, doc in enumerate(documents)])
    doc_starts = torch.tensor([0, *itertools.accumulate(map(len, documents))][:-1])
    position = torch.arange(len(stream)) - doc_starts[doc_of]
    starts = doc_starts[doc_starts + seq_len + 1 <= len(stream)]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()

    def windows(picks):
        index = starts[picks, None] + torch.arange(seq_len + 1)
        docs = doc_of[index[:, :-1]]
        return stream[index], position[index[:, :-1]], ((docs[:, :, None] == docs[:, None, :]) & causal)[:, None]

    windows.count = len(starts)
    return windows


@contextmanager
def _deterministic(recipe: TinyRecipe):
    """Seed torch and pin its thread count for the duration, restoring the caller's settings."""
    import torch

    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng_state)


def _copy_tokenizer(out_dir: Path) -> None:
    """The real v3 SentencePiece model that mistral-common ships, under the name Mistral uses."""
    from importlib import resources

    source = resources.files("mistral_common") / "data" / "mistral_instruct_tokenizer_240323.model.v3"
    with resources.as_file(source) as path:
        shutil.copyfile(path, Path(out_dir) / TOKENIZER_FILE)


def model_info(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / INFO_FILE).read_text())


# --- quality: how stable greedy decoding is under FP8 rounding ------------------------------------------

# Held-out prompts (none of them is in the corpus): chats in several languages, code, plain text, and
# one long-context prompt (~300 tokens). Used by bench/tiny_model_quality.py and tests/test_tiny_model.py.
HELD_OUT_CHATS = [
    "What is the capital of France?", "What is the capital of Italy, please?", "Who are you, assistant?",
    "Write a Python function that multiplies two numbers.", "Translate 'good evening' into French.",
    "Explique ce qu'est une étoile.", "What is 5 + 7?", "Tell me about the Moon.", "日本について教えてください。",
    "How do I sort a list in JavaScript?", "Name a large animal.", "What is a CPU?",
]
HELD_OUT_TEXTS = [
    "The history of the steam engine", "def multiply(a, b):", "Le soleil brille et", "Once upon a time, a young king",
    "Die Stadt München liegt", "import numpy as np\n", "In the morning the market",
]
LONG_CONTEXT = ("Read the following notes and summarize them in one sentence. " + " ".join(
    f"Day {d}: the team measured the river at the old bridge, wrote down the height of the water, the colour of "
    f"the sky and the number of boats, and sent the notes to the office in the city before noon." for d in range(1, 8)))


def held_out_prompts(tokenizer) -> list[list[int]]:
    chats = [tokenizer.encode_chat([{"role": "user", "content": c}]) for c in HELD_OUT_CHATS + [LONG_CONTEXT]]
    return chats + [tokenizer.encode(t) for t in HELD_OUT_TEXTS]


def measure_quality(model_dir: Path, prompts: list[list[int]], new_tokens: int = 32, kv_cache_fp8: bool = False,
                    calibration=None) -> dict:
    """FP32 greedy continuations of the prompts, then teacher-forced on them: how often the modelopt FP8
    fake-quantized model (calibrated on `calibration`, default: the builtin corpus) picks the same top-1
    token (over all new_tokens positions, and up to the first EOS), the mean KL(FP32 || FP8), and how
    peaked the FP32 next-token distributions are (mean max probability, top-1 margin in logits)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from trtbuild.config import CalibrationSettings
    from trtbuild.quantize import calibration_batches, fake_quantize_fp8
    from trtbuild.tokenizer import Tokenizer

    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    continuations = []
    with torch.no_grad():
        for prompt in prompts:  # greedy without stopping at EOS: every position counts
            out = reference(torch.tensor([prompt]), use_cache=True)
            ids = [int(out.logits[0, -1].argmax())]
            while len(ids) < new_tokens:
                out = reference(torch.tensor([ids[-1:]]), past_key_values=out.past_key_values, use_cache=True)
                ids.append(int(out.logits[0, -1].argmax()))
            continuations.append(ids)

    def next_token_logits(model) -> list:
        with torch.no_grad():
            return [model(torch.tensor([p + c]), logits_to_keep=len(c) + 1).logits[0, :-1].float()
                    for p, c in zip(prompts, continuations)]

    fp32 = next_token_logits(reference)
    quantized = copy.deepcopy(reference)
    tokenizer = Tokenizer.from_model_dir(model_dir)
    fake_quantize_fp8(quantized, calibration_batches(calibration or CalibrationSettings(), tokenizer),
                      kv_cache_fp8, progress=False)
    fp8 = next_token_logits(quantized)
    same = [a.argmax(-1) == b.argmax(-1) for a, b in zip(fp32, fp8)]
    # A reply ends at EOS; what a model says after it (a made-up next document) is seldom generated.
    replies = [s[: c.index(tokenizer.eos_id) + 1] if tokenizer.eos_id in c else s for s, c in zip(same, continuations)]
    logp32, logp8 = torch.cat(fp32).log_softmax(-1), torch.cat(fp8).log_softmax(-1)
    max_prob = logp32.exp().max(-1).values
    top2 = logp32.topk(2, dim=-1).values
    return {"positions": len(max_prob), "fp8_top1_agreement": float(torch.cat(same).float().mean()),
            "reply_positions": sum(map(len, replies)),
            "fp8_top1_agreement_until_eos": float(torch.cat(replies).float().mean()),
            "mean_kl_fp32_fp8": float((logp32.exp() * (logp32 - logp8)).sum(-1).mean()),
            "mean_max_prob": float(max_prob.mean()), "share_max_prob_below_0.5": float((max_prob < 0.5).float().mean()),
            "median_top1_margin": float((top2[:, 0] - top2[:, 1]).median()),
            "flips_per_prompt": [int((~s).sum()) for s in same], "continuations": continuations}
