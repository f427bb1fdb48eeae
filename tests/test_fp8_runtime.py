"""FP8 numerics of the torch runtime: the fp8 / fp8-kv8 engines against an independent FP8 reference.

The reference is modelopt's own fake-quantized model: transformers' MistralForCausalLM with modelopt's
FP8 quantizers (weights, linear inputs, and for fp8-kv8 the K/V BMM quantizers inside transformers'
attention), their ranges set from the scales in the engine's checkpoint. It shares no code with
trtbuild.runtime.fp8 or the runtime's attention.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import one_thread  # noqa: F401  (autouse: one intra-op thread for this module)

from trtbuild.runtime import SamplingParams, load_engine
from trtbuild.runtime.fp8 import FP8_MAX, FP8Linear, fake_quant, round_fp8

PROMPTS = [("What is the capital of France?", "The capital of France is Paris, a large city on the Seine."),
           ("Write a Python function that returns the square of a number.", "def square(x):\n    return x * x")]


def modelopt_reference(model_dir, kv_cache_fp8: bool):
    """modelopt's fake-quant model with the exported scales as quantizer ranges (amax = scale * 448)."""
    import modelopt.torch.quantization as mtq
    from safetensors.torch import load_file
    from transformers import AutoConfig, MistralForCausalLM

    tensors = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(file))
    config = AutoConfig.from_pretrained(model_dir)
    del config.quantization_config
    state = {name: (t.float() * tensors[name + "_scale"] if t.dtype == torch.float8_e4m3fn else t.float())
             for name, t in tensors.items() if not name.endswith("_scale")}
    model = MistralForCausalLM(config).float().eval()
    model.load_state_dict(state)
    quant_cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    if kv_cache_fp8:
        quant_cfg["quant_cfg"] = quant_cfg["quant_cfg"] + copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"])
    with torch.no_grad():
        model = mtq.quantize(model, quant_cfg, forward_loop=None)  # no calibration: ranges come from the export
    ranges = 0
    for name, module in model.named_modules():
        if f"{name}.input_scale" in tensors:
            module.input_quantizer.amax = tensors[f"{name}.input_scale"].float() * FP8_MAX
            module.weight_quantizer.amax = tensors[f"{name}.weight_scale"].float() * FP8_MAX
            ranges += 1
        if kv_cache_fp8 and hasattr(module, "k_bmm_quantizer"):
            assert module.k_bmm_quantizer.is_enabled and module.v_bmm_quantizer.is_enabled
            module.k_bmm_quantizer.amax = tensors[f"{name}.k_proj.k_scale"].float() * FP8_MAX
            module.v_bmm_quantizer.amax = tensors[f"{name}.v_proj.v_scale"].float() * FP8_MAX
    assert ranges == 7 * config.num_hidden_layers
    return model


@pytest.fixture(scope="module")
def sequences(tokenizer):
    return [(tokenizer.encode_chat([{"role": "user", "content": q}]), tokenizer.encode(a, bos=False))
            for q, a in PROMPTS]


@pytest.fixture(scope="module")
def engines(engine_dirs):
    loaded = {v: load_engine(engine_dirs[v], device="cpu") for v in ("fp16", "fp8", "fp8-kv8")}
    yield loaded
    for engine in loaded.values():
        engine.close()


def scores(engine, sequences):
    return [engine.score(prompt, continuation) for prompt, continuation in sequences]


def fp8_ordinal(codes: torch.Tensor) -> torch.Tensor:
    """e4m3 codes -> integers in value order (adjacent representable values differ by 1; +0 == -0)."""
    bits = codes.view(torch.uint8).to(torch.int16)
    magnitude = bits & 0x7F
    return torch.where(bits & 0x80 != 0, -magnitude, magnitude)


def our_roundings(engine, prompt, continuation, monkeypatch):
    """Score with our runtime, recording every FP8 rounding decision it takes: the input codes of each
    FP8Linear (by module name) and the K/V cache codes (in call order: layer 0 k, layer 0 v, layer 1 k, ...)."""
    import trtbuild.runtime.kv_cache as kv_cache

    linear_codes, kv_codes, hooks = {}, [], []
    for name, module in engine.model.net.named_modules():
        if isinstance(module, FP8Linear):
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, name=name: linear_codes.__setitem__(name, round_fp8(args[0], m.input_scale))))

    def recording_round(x, scale):
        kv_codes.append(round_fp8(x, scale))
        return kv_codes[-1]

    monkeypatch.setattr(kv_cache, "round_fp8", recording_round)
    try:
        logprobs = engine.score(prompt, continuation)
    finally:
        monkeypatch.undo()
        for hook in hooks:
            hook.remove()
    return logprobs, linear_codes, kv_codes


def reference_with_our_roundings(model, tokens, linear_codes, kv_codes, kv8):
    """Run the modelopt reference, but let each of its FP8 quantizers output OUR rounding decision.

    Its own decision is recorded too, so the caller can check that the two disagree only where float32
    noise can decide a rounding: between adjacent e4m3 values. Everything else (GEMMs, RoPE, attention,
    norms) is the reference's own arithmetic, independent of ours."""
    decisions, hooks = [], []

    def force(ours, scale):
        def hook(module, args, output):
            own = round_fp8(output, scale)
            decisions.append((fp8_ordinal(own), fp8_ordinal(ours)))
            return (ours.float() * scale).to(output.dtype).reshape(output.shape)
        return hook

    for name, module in model.named_modules():
        if name in linear_codes:
            scale = module.input_quantizer.amax.float() / FP8_MAX
            hooks.append(module.input_quantizer.register_forward_hook(force(linear_codes[name], scale)))
        if kv8 and hasattr(module, "k_bmm_quantizer"):
            layer = int(name.split(".")[2])
            for i, quantizer in enumerate((module.k_bmm_quantizer, module.v_bmm_quantizer)):
                scale = quantizer.amax.float() / FP8_MAX
                hooks.append(quantizer.register_forward_hook(force(kv_codes[2 * layer + i], scale)))
    try:
        with torch.inference_mode():
            logits = model(torch.tensor([tokens])).logits[0]
    finally:
        for hook in hooks:
            hook.remove()
    return torch.log_softmax(logits.float(), dim=-1).numpy(), decisions


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fp8", "fp8-kv8"])
def test_fp8_engine_matches_modelopt_and_differs_from_fp16(engines, engine_dirs, sequences, variant,
                                                           monkeypatch):
    """Our FP8 numerics equal modelopt's, up to rounding ties that float32 noise decides.

    A rounding to e4m3 is a step function: one ulp of float32 noise in an activation that lies on a
    rounding midpoint moves it a whole FP8 step, and the step then propagates (another CPU measured a
    0.04 logprob difference from such flips). So the comparison is made invariant to them: the reference
    takes OUR rounding decisions, and we check separately that every decision it would have taken
    differently is a tie between adjacent e4m3 values, and that such ties are rare."""
    kv8 = variant == "fp8-kv8"
    reference_model = modelopt_reference(engine_dirs[variant] / "model", kv8)
    fp16_scores = scores(engines["fp16"], sequences)
    for (prompt, continuation), fp16 in zip(sequences, fp16_scores):
        ours, linear_codes, kv_codes = our_roundings(engines[variant], prompt, continuation, monkeypatch)
        assert len(linear_codes) == 7 * reference_model.config.num_hidden_layers
        assert len(kv_codes) == (2 * reference_model.config.num_hidden_layers if kv8 else 0)
        full, decisions = reference_with_our_roundings(reference_model, prompt + continuation, linear_codes,
                                                       kv_codes, kv8)
        reference = full[len(prompt) - 1: -1]
        assert len(decisions) == len(linear_codes) + len(kv_codes)  # every quantizer took our decision
        total = sum(own.numel() for own, _ in decisions)
        differing = [(own - theirs)[own != theirs] for own, theirs in decisions]
        # A tie decided by float noise can only pick the other of the two nearest e4m3 values.
        assert all(d.abs().max() <= 1 for d in differing if d.numel())
        # Float32 noise of a few ulp (<= 2^-19 relative after a 256-term dot product) lands within reach
        # of a midpoint for a fraction ~2^-19 / 2^-4 (the e4m3 step) ~ 3e-5 of roundings: 1e-3 is 30x that.
        assert sum(d.numel() for d in differing) <= 1e-3 * total
        # With the rounding decisions shared, what is left is float32 accumulation-order noise in two
        # independent implementations: ~1e-6 relative on logits of magnitude < 50, so < 1e-4; 2e-3 is 20x.
        difference = np.abs(ours - reference)
        assert difference.max() < 2e-3
        assert difference.mean() < 2e-4
        # The top token agrees wherever the reference's top-2 gap exceeds that noise bound.
        top2 = np.sort(reference, axis=-1)[:, -2:]
        decided = top2[:, 1] - top2[:, 0] > 2e-3
        assert (ours.argmax(-1) == reference.argmax(-1))[decided].all()
        # The numerics really changed: an e4m3 rounding moves a value by up to 2^-4 relative, ~10^5 times
        # float32 noise; over ~30 positions some logprob moves by far more than 0.02.
        assert np.abs(ours - fp16).max() > 2e-2


@pytest.mark.slow
def test_fp8_kv_cache_changes_the_numerics(engines, sequences):
    for fp8, kv8 in zip(scores(engines["fp8"], sequences), scores(engines["fp8-kv8"], sequences)):
        assert np.abs(fp8 - kv8).max() > 1e-3


def test_fp8_engines_hold_fp8_tensors(engines):
    for variant, kv8 in (("fp8", False), ("fp8-kv8", True)):
        engine = engines[variant]
        layers = engine.model.config.num_hidden_layers
        fp8_linears = [m for m in engine.model.net.modules() if isinstance(m, FP8Linear)]
        assert len(fp8_linears) == 7 * layers  # q, k, v, o, gate, up, down in every layer
        assert all(m.weight.dtype == torch.float8_e4m3fn for m in fp8_linears)
        assert (engine._cache.k.dtype == torch.float8_e4m3fn) is kv8
        assert (engine.model.kv_scales is not None) is kv8
        assert engine.info.precision["weights"] == "float8_e4m3fn"
    assert not any(isinstance(m, FP8Linear) for m in engines["fp16"].model.net.modules())


def test_fp8_kv_cache_batched_equals_alone(engines, tokenizer):
    engine = engines["fp8-kv8"]
    prompts = [tokenizer.encode_chat([{"role": "user", "content": q}]) for q, _ in PROMPTS]
    prompts += [tokenizer.encode("Once upon a time"), tokenizer.encode("The capital of Denmark is")]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    alone = [engine.generate([p], params)[0].token_ids for p in prompts]
    assert [r.token_ids for r in engine.generate(prompts, params)] == alone


def test_round_fp8_is_e4m3_with_saturation():
    x = torch.tensor([0.0, 1.0, 1.0625, 1.1875, 300.0, 449.0, 1e6, -1e6, 2.0 ** -9, 2.0 ** -11])
    got = round_fp8(x, 1.0).float()
    # 3 mantissa bits: 1.0625 ties to even (1.0), 1.1875 ties to even (1.25); +-448 is the largest value;
    # 2^-9 is the smallest subnormal and 2^-11 rounds to zero.
    assert got.tolist() == [0.0, 1.0, 1.0, 1.25, 288.0, 448.0, 448.0, -448.0, 2.0 ** -9, 0.0]
    assert fake_quant(torch.tensor([3.0, 1000.0]), 0.5).tolist() == [3.0, 224.0]


def test_fp8_linear_computes_what_an_fp8_gemm_sees():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 32, generator=generator) * 0.1
    weight_scale = weight.abs().max() / FP8_MAX
    x = torch.randn(3, 32, generator=generator)
    input_scale = torch.tensor(0.5 * x.abs().max().item() / FP8_MAX)  # some inputs saturate
    layer = FP8Linear((weight / weight_scale).to(torch.float8_e4m3fn), weight_scale, input_scale)
    x_fp8 = (x / input_scale).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    w_fp8 = (weight / weight_scale).to(torch.float8_e4m3fn).float()
    expected = (x_fp8 @ w_fp8.T) * (input_scale * weight_scale)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    assert (layer(x) - x @ weight.T).abs().max() > 1e-3  # not the unquantized product
