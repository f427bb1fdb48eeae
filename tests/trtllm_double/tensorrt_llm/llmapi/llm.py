"""TEST DOUBLE of the TensorRT-backend LLM (tensorrt_llm/llmapi/llm.py@4c05a74891e4df8066f08ed4ce14b0972abe4e25,
class _TrtLLM(BaseLLM)). Mirrored behaviour:

- __init__ rejects keywords outside TrtLlmArgs ("got invalid argument"); makes
  TemporaryDirectory(suffix="-llm-workspace", dir=args.workspace) (so $TMPDIR without `workspace`);
  `_build_model` builds when `model` is a Hugging Face checkpoint (quantizing first when quant_config asks:
  the model is loaded, then get_calib_dataloader reads the calibration set, quantize_by_modelopt.py index id
  1063601771) or loads when `model` is an engine dir (config.json with pretrained_config and build_config;
  the engine's build_config replaces the argument's); and ALWAYS starts the executor afterwards (1.2 has no
  build-only mode), with the KvCacheConfig given (default free_gpu_memory_fraction 0.9).
- save(dir): shutil.copytree of the engine dir; shutdown(): executor, then MPI session; idempotent.
- the tokenizer (BaseLlmArgs.validate_and_init_tokenizer, llm_args.py index id 1090804222, and
  BaseLLM._try_load_tokenizer): skip_tokenizer_init=True -> None whatever `tokenizer` says; else
  tokenizer_factory(tokenizer), or load_hf_tokenizer(model) when none was given (a warning and None on failure).
- guided decoding (`_TrtLLM._build_model`): guided_decoding_backend "xgrammar" -> the executor gets
  `_xgrammar_tokenizer_info(self.tokenizer)` (fails without a fast tokenizer), any other non-None value ->
  ValueError("Unsupported guided decoding backend ..."); TrtLlmArgs itself accepts only "xgrammar",
  "llguidance" or None. A request with guided_decoding on an executor without that config is refused
  (a ValueError here; the C++ executor's own message was not read). The double enforces the guide with
  llguidance over the same Hugging Face tokenizer (TensorRT-LLM uses xgrammar; what is modelled is
  "the output follows the guide"); JSON whitespace is compact or one space (xgrammar's setting in the C++
  decoder was not read).
- RequestOutput carries self.tokenizer (RequestOutput._from_generation_result); with detokenize=True it
  decodes after every response (DetokenizedGenerationResultBase._handle_response, executor/result.py
  index id 1063746606), recorded in EVENTS as ("detokenize", id) so tests can see that nothing decodes.
- generate_async: "LLM is shutting down" after shutdown; _prepare_sampling_params (end_id required without a
  tokenizer; prompt_logprobs switches return_context_logits on); _check_arguments (prompt + max_tokens <=
  the engine's max_seq_len; prompt_logprobs needs gather_context_logits; logprobs needs the LLM's
  gather_generation_logits). return_context_logits without gather_context_logits: the C++ executor refuses
  it (a ValueError here; the real message was not read).
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from tensorrt_llm.builder import BuildConfig, apply_build_rules, save_engine
from tensorrt_llm.executor import EVENTS, RequestOutput, Worker
from tensorrt_llm.llmapi.llm_args import TRT_LLM_ARGS, KvCacheConfig
from tensorrt_llm.llmapi.tokenizer import _xgrammar_tokenizer_info, load_hf_tokenizer, tokenizer_factory
from tensorrt_llm.sampling_params import SamplingParams

logger = logging.getLogger("tensorrt_llm")
_ids = itertools.count(1)


class _TrtLLM:
    def __init__(self, model, tokenizer=None, skip_tokenizer_init: bool = False, tensor_parallel_size: int = 1,
                 dtype: str = "auto", **kwargs):
        for key in kwargs:
            if key not in TRT_LLM_ARGS:
                raise ValueError(f"{type(self).__name__} got invalid argument: {key}")
        self.args = dict(kwargs, model=str(model), skip_tokenizer_init=skip_tokenizer_init,
                         tensor_parallel_size=tensor_parallel_size, dtype=dtype, tokenizer=tokenizer)
        backend = kwargs.get("guided_decoding_backend")
        if backend not in ("xgrammar", "llguidance", None):  # Optional[Literal["xgrammar", "llguidance"]]
            raise ValueError(f"guided_decoding_backend: Input should be 'xgrammar' or 'llguidance', got {backend!r}")
        # validate_and_init_tokenizer
        self.tokenizer = None if skip_tokenizer_init else tokenizer_factory(tokenizer)
        if tensor_parallel_size != 1:
            raise RuntimeError(f"Only 0 GPUs are available, but {tensor_parallel_size} are required.")
        kv = kwargs.get("kv_cache_config") or KvCacheConfig()
        if kv.dtype != "auto":  # TrtLlmArgs.validate_kv_cache_dtype
            raise AssertionError("KvCacheConfig.dtype is not supported by the TensorRT backend.")
        self._workspace = tempfile.TemporaryDirectory(suffix="-llm-workspace", dir=kwargs.get("workspace"))
        EVENTS.append(("workspace", self._workspace.name))
        print(f"[trtllm-double] workspace {self._workspace.name}", file=sys.stderr, flush=True)
        self._executor = None
        model = Path(model)
        if _is_engine_dir(model):
            self._engine_dir = model
        else:
            self._engine_dir = self._build(model, kwargs.get("build_config") or BuildConfig(), dtype,
                                           kwargs.get("quant_config"), kwargs.get("calib_config"))
        config = json.loads((self._engine_dir / "config.json").read_text())
        self.args["build_config"] = BuildConfig(**config["build_config"])  # "build_config is ignored for TLLM_ENGINE"
        self._max_seq_len = config["build_config"]["max_seq_len"]
        if not skip_tokenizer_init and self.tokenizer is None:  # _try_load_tokenizer: from the engine dir
            self.tokenizer = load_hf_tokenizer(str(self._engine_dir))
        guided = None
        if backend == "xgrammar":
            info = _xgrammar_tokenizer_info(self.tokenizer)
            guided = (self.tokenizer.tokenizer, info["stop_token_ids"])
            EVENTS.append(("guided_decoding_config", {"backend": "xgrammar", "vocab": len(info["encoded_vocab"]),
                                                      "stop_token_ids": info["stop_token_ids"]}))
        elif backend is not None:
            raise ValueError(f"Unsupported guided decoding backend {backend}")
        EVENTS.append(("executor_start", kv.to_dict()))
        print(f"[trtllm-double] executor started, KvCacheConfig {json.dumps(kv.to_dict(), sort_keys=True)}",
              file=sys.stderr, flush=True)
        self._executor = Worker(lambda: _load_model(self._engine_dir, config),
                                self.args["build_config"].gather_context_logits, guided)

    # --- the build -------------------------------------------------------------------------------------
    def _build(self, hf_dir: Path, build: BuildConfig, dtype: str, quant, calib) -> Path:
        import numpy as np
        from safetensors.numpy import load_file

        hf = json.loads((hf_dir / "config.json").read_text())
        dtype = hf.get("torch_dtype", "float16") if dtype == "auto" else dtype
        weights = {}
        for f in sorted(hf_dir.glob("model*.safetensors")):
            weights.update(load_file(str(f)))
        print(f"[trtllm-double] loaded Hugging Face checkpoint {hf_dir}", file=sys.stderr, flush=True)
        quant_algo = kv_algo = None
        if quant is not None and quant.quant_algo is not None:
            quant_algo = quant.quant_algo.value
            kv_algo = quant.kv_cache_quant_algo.value if quant.kv_cache_quant_algo else None
            texts = get_calib_dataloader(calib.calib_dataset if calib else "cnn_dailymail",
                                         calib.calib_batches if calib else 512)
            print(f"[trtllm-double] calibrated on {len(texts)} samples of {calib.calib_dataset}", file=sys.stderr, flush=True)
            (Path(self._workspace.name) / "quantized-checkpoint").mkdir()
        pretrained = _pretrained_config(hf, dtype, quant_algo, kv_algo)
        effective = apply_build_rules(pretrained, build)
        engine_dir = Path(self._workspace.name) / "tmp.engine"
        if dtype != "float16":  # numpy has no bfloat16; the test suite builds float16 only
            raise NotImplementedError(f"(test double) dtype {dtype}: only float16 engines are modelled")
        save_engine(engine_dir, pretrained, effective,
                    {k: np.ascontiguousarray(v.astype(np.float16)) for k, v in weights.items()}, "1.2.0")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):  # ModelLoader.save
            if (hf_dir / name).is_file():
                shutil.copy2(hf_dir / name, engine_dir / name)
        print(f"[trtllm-double] built {engine_dir} (a test double, not a TensorRT engine)", file=sys.stderr, flush=True)
        return engine_dir

    # --- the LLM API -----------------------------------------------------------------------------------
    @property
    def workspace(self) -> Path:
        return Path(self._workspace.name)

    def save(self, engine_dir: str) -> None:
        if Path(engine_dir).absolute() == self._engine_dir.absolute():
            return
        shutil.copytree(self._engine_dir, engine_dir, dirs_exist_ok=True)

    def generate_async(self, inputs, sampling_params: SamplingParams | None = None, streaming: bool = False):
        if self._executor is None:
            raise RuntimeError("LLM is shutting down")
        sp = sampling_params or SamplingParams()
        if sp.end_id is None:  # skip_tokenizer_init: no tokenizer to take end_id from
            raise ValueError("tokenizer is required to reset end_id if it is None, or you can explicitly "
                             "specify the end_id for sampling_params")
        if sp.prompt_logprobs and not sp.return_context_logits:
            sp.return_context_logits = True
        prompt = list(inputs["prompt_token_ids"])
        self._check_arguments(len(prompt), sp)
        if sp.guided_decoding is not None:
            sp.guided_decoding._validate()
            if self._executor.guided is None:
                raise ValueError("(test double) guided decoding needs an LLM created with guided_decoding_backend="
                                 "'xgrammar' (the executor has no GuidedDecodingConfig)")
        output = RequestOutput(next(_ids), prompt, sp, self._executor, self.tokenizer)
        self._executor.submit(output)
        return output

    def _check_arguments(self, prompt_len: int, sp) -> None:
        build = self.args["build_config"]
        if prompt_len + (sp.max_tokens or 0) > self._max_seq_len:
            raise ValueError(f"The sum of prompt length ({prompt_len}) and query length (0) max_tokens "
                             f"({sp.max_tokens}) should not exceed max_seq_len ({self._max_seq_len})")
        if sp.prompt_logprobs and not build.gather_context_logits:
            raise ValueError(f"`sampling_params's prompt_logprobs={sp.prompt_logprobs}` requires "
                             "`gather_context_logits=True` in the `BuildConfig` when constructing the LLM.")
        if sp.logprobs and not self.args.get("gather_generation_logits"):
            raise ValueError(f"`sampling_params.logprobs={sp.logprobs}` requires `gather_generation_logits=True` "
                             "to be passed explicitly to the `LLM()` constructor.")
        if sp.return_context_logits and not build.gather_context_logits:
            raise ValueError("return_context_logits needs an engine built with gather_context_logits")

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None


def _is_engine_dir(path: Path) -> bool:
    """get_model_format: TLLM_ENGINE when config.json has pretrained_config and build_config."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return "pretrained_config" in config and "build_config" in config


def _pretrained_config(hf: dict, dtype: str, quant_algo, kv_algo) -> dict:
    """The fields of PretrainedConfig.to_dict() (models/modeling_utils.py) that the double uses."""
    return {"architecture": hf["architectures"][0], "dtype": dtype, "vocab_size": hf["vocab_size"],
            "hidden_size": hf["hidden_size"], "num_hidden_layers": hf["num_hidden_layers"],
            "num_attention_heads": hf["num_attention_heads"], "num_key_value_heads": hf["num_key_value_heads"],
            "head_size": hf.get("head_dim"), "intermediate_size": hf["intermediate_size"],
            "norm_epsilon": hf["rms_norm_eps"], "position_embedding_type": "rope_gpt_neox",
            "max_position_embeddings": hf["max_position_embeddings"], "rotary_base": hf.get("rope_theta", 10000.0),
            "hidden_act": hf.get("hidden_act", "silu"), "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
            # quantize_and_export(quantize_lm_head=False): lm_head stays unquantized whatever was asked
            "quantization": {"quant_algo": quant_algo, "kv_cache_quant_algo": kv_algo,
                             "exclude_modules": ["lm_head"] if quant_algo else None}}


def _load_model(engine_dir: Path, config: dict):
    """The double's "engine": transformers Mistral in float32 with the engine's (build-dtype) weights."""
    import torch
    from safetensors.torch import load_file
    from transformers import MistralConfig, MistralForCausalLM

    p = config["pretrained_config"]
    hf = MistralConfig(vocab_size=p["vocab_size"], hidden_size=p["hidden_size"],
                       intermediate_size=p["intermediate_size"], num_hidden_layers=p["num_hidden_layers"],
                       num_attention_heads=p["num_attention_heads"], num_key_value_heads=p["num_key_value_heads"],
                       head_dim=p["head_size"], max_position_embeddings=p["max_position_embeddings"],
                       rope_theta=p["rotary_base"], rms_norm_eps=p["norm_epsilon"], sliding_window=None,
                       tie_word_embeddings=False)
    model = MistralForCausalLM(hf)
    model.load_state_dict({k: v.float() for k, v in load_file(str(engine_dir / "rank0.engine")).items()})
    # (rank0.engine is a safetensors file: the double's stand-in for a TensorRT plan)
    return model.eval().to(torch.float32)


def get_calib_dataloader(dataset: str, calib_size: int) -> list[str]:
    """The dataset branches of quantize_by_modelopt.get_calib_dataloader (index id 1063601771); the hub and
    URL branches fail here as they do offline. A local directory is read like load_dataset(dir, split="train")
    for JSON lines: files named *train* (all files when none is), column "text"."""
    import os

    if dataset == "pileval" or "scienceqa" in dataset.lower() or "cnn_dailymail" in dataset:
        raise ConnectionError(f"(test double) no network: cannot download calibration dataset {dataset}")
    if not os.path.isdir(dataset):
        raise NotImplementedError(f"Unsupported dataset name or local repo directory: {dataset}.")
    files = sorted(Path(dataset).rglob("*.jsonl"))
    files = [f for f in files if "train" in f.name] or files
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    return [row["text"] for row in rows][:calib_size]
