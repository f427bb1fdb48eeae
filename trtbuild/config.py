"""Build profiles: the user's settings, read from TOML into dataclasses, checked once.

A profile names the source model and a set of variants (fp16, fp8, fp8-kv8). Each variant is the
profile's [build] table overlaid with its own [variants.NAME] table, resolved into one BuildSettings.
Everything downstream (engine keys, TensorRT-LLM configs, the torch backend) reads BuildSettings only.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from trtbuild import DEFAULT_MODEL
from trtbuild.errors import TrtbuildError

VARIANTS = ("fp16", "fp8", "fp8-kv8")
DTYPES = ("float16", "bfloat16")
QUANTIZATIONS = ("none", "fp8")
KV_CACHE_DTYPES = ("auto", "fp8")
BUILTIN_PROFILES = {"cpu-tiny": "cpu-tiny.toml", "h100-mistral-7b": "h100-mistral-7b.toml"}
DEFAULT_PROFILE = "cpu-tiny"


@dataclass
class CalibrationSettings:
    """Post-training quantization calibration (modelopt on CPU, CalibConfig on TensorRT-LLM)."""

    dataset: str = "builtin"  # "builtin", a local .txt/.jsonl file, or a hub dataset name
    num_samples: int = 64
    max_seq_len: int = 256
    batch_size: int = 1
    seed: int = 1234


@dataclass
class BuildSettings:
    """One variant's build settings, fully resolved. The names follow TensorRT-LLM's BuildConfig."""

    variant: str
    dtype: str = "float16"
    quantization: str = "none"
    kv_cache_dtype: str = "auto"
    max_batch_size: int = 8
    max_input_len: int = 256
    max_seq_len: int = 512
    max_num_tokens: int = 2048
    max_beam_width: int = 1
    tp_size: int = 1
    gather_generation_logits: bool = False
    plugins: dict[str, Any] = field(default_factory=dict)
    calibration: CalibrationSettings | None = None

    @property
    def is_fp8(self) -> bool:
        return self.quantization == "fp8"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BuildSettings:
        data = dict(data)
        calib = data.pop("calibration", None)
        return cls(**data, calibration=CalibrationSettings(**calib) if calib else None)


@dataclass
class ModelSource:
    id: str = DEFAULT_MODEL
    revision: str | None = None  # a commit sha for hub models; None for local and builtin models


@dataclass
class Profile:
    name: str
    model: ModelSource
    variants: dict[str, BuildSettings]
    gpu: str = "H100-SXM-80GB"  # the GPU `trtbuild plan` budgets for
    validation: dict[str, dict[str, float]] = field(default_factory=dict)  # precision -> thresholds
    bench: dict[str, Any] = field(default_factory=dict)  # defaults for `trtbuild bench` in `run`
    source: str = ""  # where the profile was read from

    def variant(self, name: str) -> BuildSettings:
        if name not in self.variants:
            raise TrtbuildError(
                f"profile {self.name} has no variant {name!r}; it defines {', '.join(self.variants)}"
            )
        return self.variants[name]

    def select(self, variant: str) -> list[BuildSettings]:
        """'all' or one name -> the BuildSettings to build, in profile order."""
        if variant == "all":
            return list(self.variants.values())
        return [self.variant(variant)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        data = dict(data)
        return cls(
            **{k: v for k, v in data.items() if k not in ("model", "variants")},
            model=ModelSource(**data["model"]),
            variants={k: BuildSettings.from_dict(v) for k, v in data["variants"].items()},
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# --- reading and checking -------------------------------------------------------------------------

_INT_FIELDS = ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width", "tp_size")


def load_profile(spec: str | Path | None = None) -> Profile:
    """Read a profile from a builtin name ('cpu-tiny', 'h100-mistral-7b') or a TOML file path."""
    spec = str(spec or DEFAULT_PROFILE)
    if spec in BUILTIN_PROFILES:
        text = resources.files("trtbuild.profiles").joinpath(BUILTIN_PROFILES[spec]).read_text()
        name, source = spec, f"builtin:{spec}"
    else:
        path = Path(spec)
        if not path.is_file():
            raise TrtbuildError(
                f"profile {spec!r} not found; pass a TOML file or one of: {', '.join(BUILTIN_PROFILES)}"
            )
        text, name, source = path.read_text(), path.stem, str(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TrtbuildError(f"profile {source}: invalid TOML ({exc}); fix the file") from None
    return parse_profile(raw, name=name, source=source)


def parse_profile(raw: dict, name: str = "profile", source: str = "") -> Profile:
    where = source or name
    unknown = set(raw) - {"name", "model", "gpu", "build", "calibration", "variants", "validation", "bench"}
    if unknown:
        raise TrtbuildError(f"profile {where}: unknown table(s) {sorted(unknown)}; remove or rename them")
    model = raw.get("model", {})
    source_model = ModelSource(id=str(model.get("id", DEFAULT_MODEL)), revision=model.get("revision") or None)
    base = dict(raw.get("build", {}))
    calib_base = dict(raw.get("calibration", {}))
    variants_raw = raw.get("variants") or {v: {} for v in VARIANTS}
    variants = {}
    for vname, overrides in variants_raw.items():
        if vname not in VARIANTS:
            raise TrtbuildError(f"profile {where}: variant {vname!r} is not one of {', '.join(VARIANTS)}")
        variants[vname] = _resolve_variant(vname, base, calib_base, dict(overrides), where)
    return Profile(
        name=str(raw.get("name", name)),
        model=source_model,
        variants=variants,
        gpu=str(raw.get("gpu", "H100-SXM-80GB")),
        validation=dict(raw.get("validation", {})),
        bench=dict(raw.get("bench", {})),
        source=where,
    )


def _resolve_variant(vname: str, base: dict, calib_base: dict, overrides: dict, where: str) -> BuildSettings:
    merged = {**base, **overrides}
    merged.setdefault("quantization", "fp8" if vname.startswith("fp8") else "none")
    merged.setdefault("kv_cache_dtype", "fp8" if vname == "fp8-kv8" else "auto")
    merged["plugins"] = {**base.get("plugins", {}), **overrides.get("plugins", {})}
    calib = {**calib_base, **merged.pop("calibration", {})}
    known = {f.name for f in dataclasses.fields(BuildSettings)} - {"variant", "calibration"}
    bad = set(merged) - known
    if bad:
        raise TrtbuildError(f"profile {where}: variants.{vname} has unknown setting(s) {sorted(bad)}; "
                            f"known: {', '.join(sorted(known))}")
    try:
        settings = BuildSettings(variant=vname, **merged)
        if settings.is_fp8:
            settings.calibration = CalibrationSettings(**calib)
    except TypeError as exc:
        raise TrtbuildError(f"profile {where}: variants.{vname}: {exc}") from None
    check_settings(settings, where)
    return settings


def check_settings(s: BuildSettings, where: str = "profile") -> None:
    """Reject values TensorRT-LLM would fail on later (or worse, silently accept)."""
    prefix = f"{where}: variants.{s.variant}"
    for name in _INT_FIELDS:
        value = getattr(s, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TrtbuildError(f"{prefix}.{name} must be a positive integer, got {value!r}")
    if s.dtype not in DTYPES:
        raise TrtbuildError(f"{prefix}.dtype must be one of {', '.join(DTYPES)}, got {s.dtype!r}")
    if s.quantization not in QUANTIZATIONS:
        raise TrtbuildError(f"{prefix}.quantization must be one of {', '.join(QUANTIZATIONS)}, got {s.quantization!r}")
    if s.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise TrtbuildError(f"{prefix}.kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {s.kv_cache_dtype!r}")
    if s.kv_cache_dtype == "fp8" and not s.is_fp8:
        raise TrtbuildError(f"{prefix}: an FP8 KV cache needs quantization = \"fp8\" (its scales come from calibration)")
    if s.max_input_len > s.max_seq_len:
        raise TrtbuildError(f"{prefix}.max_input_len ({s.max_input_len}) exceeds max_seq_len ({s.max_seq_len}); "
                            "raise max_seq_len or lower max_input_len")
    if s.max_num_tokens < s.max_input_len:
        raise TrtbuildError(f"{prefix}.max_num_tokens ({s.max_num_tokens}) is below max_input_len "
                            f"({s.max_input_len}); a full prompt must fit one forward pass")
    if s.max_beam_width != 1:
        raise TrtbuildError(f"{prefix}.max_beam_width: only 1 (no beam search) is supported")
    if s.calibration is not None:
        c = s.calibration
        for name in ("num_samples", "max_seq_len", "batch_size"):
            value = getattr(c, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TrtbuildError(f"{prefix}.calibration.{name} must be a positive integer, got {value!r}")
    from trtbuild.trtllm_config import check_plugin_names  # the list of PluginConfig names lives there

    check_plugin_names(s.plugins, prefix)
