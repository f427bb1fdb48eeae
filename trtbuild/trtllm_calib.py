"""Calibration data for TensorRT-LLM FP8 builds: checked before anything loads, offline by default.

TensorRT-LLM's get_calib_dataloader (tensorrt_llm/quantization/quantize_by_modelopt.py, NVIDIA/TensorRT-LLM
index id 1063601771, 1.2 line) reads only, in this order:
  "pileval"                         a URL (network)
  a name containing scienceqa       the hub (or a local dir with that name)
  a name containing "cnn_dailymail" load_dataset(name, "3.0.0", split="train") from the hub
  a local directory                 load_dataset(dir, split="train")["text"][:calib_size]
and raises NotImplementedError for anything else, after the model is loaded. So trtbuild:
  - turns "builtin" (the bundled corpus) and a local .txt/.jsonl file into a local directory holding
    train.jsonl with one {"text": ...} per line: datasets infers the JSON builder from the extension and the
    train split from the file name (huggingface.co/docs/datasets repository_structure, "Splits and file
    names"); the directory name never contains cnn_dailymail/scienceqa (that would take the hub branch);
  - passes a local dataset directory through after checking it holds data files;
  - passes the three hub names through, refusing them when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set;
  - refuses any other name at once, before the build loads the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trtbuild.errors import TrtbuildError

CALIB_FILE = "train.jsonl"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow", ".txt")
HUB_WORDS = ("cnn_dailymail", "scienceqa", "science_qa")  # substrings TensorRT-LLM routes to the hub


def hub_dataset(name: str) -> bool:
    """A name TensorRT-LLM downloads (get_calib_dataloader's network branches)."""
    return name == "pileval" or any(word in name.lower() for word in HUB_WORDS)


def offline() -> bool:
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def calibration_kind(dataset: str) -> str:
    """'bundled' (builtin), 'file' (.txt/.jsonl), 'dir' (a dataset directory) or 'hub'; a one-line
    TrtbuildError for anything TensorRT-LLM would refuse or cannot reach."""
    if dataset == "builtin":
        return "bundled"
    path = Path(dataset).expanduser()
    if path.is_file():
        return "file"
    if path.is_dir():
        if any(word in str(path).lower() for word in HUB_WORDS):
            raise TrtbuildError(f"calibration directory {path}: TensorRT-LLM loads any path containing "
                                f"{' or '.join(HUB_WORDS[:2])} from the hub instead; rename the directory")
        if not any(p.suffix in DATA_SUFFIXES for p in path.rglob("*") if p.is_file()):
            raise TrtbuildError(f"calibration directory {path} holds no data files ({', '.join(DATA_SUFFIXES)}); "
                                f'put a {CALIB_FILE} with one {{"text": ...}} per line in it')
        return "dir"
    if dataset.startswith((".", "/", "~")) or path.suffix:
        raise TrtbuildError(f"calibration data {dataset} not found; pass an existing .txt/.jsonl file, a dataset "
                            "directory or 'builtin'")
    if not hub_dataset(dataset):
        raise TrtbuildError(f"TensorRT-LLM cannot calibrate on {dataset!r}: it reads only cnn_dailymail, pileval, "
                            "scienceqa or a local directory; use 'builtin' or a local .txt/.jsonl file")
    if offline():
        raise TrtbuildError(f"calibration dataset {dataset!r} is downloaded from the hub but HF_HUB_OFFLINE is set; "
                            "set [calibration] dataset = \"builtin\" or a local .txt/.jsonl file")
    return "hub"


def sample_text(sample: dict) -> str:
    """A bundled or user sample as plain text: chats become their messages' contents, one per paragraph
    (calibration needs the activations of real text, not the chat template's control tokens)."""
    if "messages" in sample:
        return "\n\n".join(str(m.get("content", "")) for m in sample["messages"] if m.get("content"))
    return sample["text"]


def write_calib_dir(dataset: str, dest: str | Path) -> int:
    """Write `dest`/train.jsonl from the bundled corpus or a local .txt/.jsonl file; returns the sample
    count. Written to a temporary name and renamed: never a half-written dataset."""
    from trtbuild.data import corpus_samples, read_samples

    samples = corpus_samples() if dataset == "builtin" else read_samples(Path(dataset).expanduser())
    texts = [t for t in (sample_text(s).strip() for s in samples) if t]
    if not texts:
        raise TrtbuildError(f"calibration data {dataset} holds no text; put one sample per line or paragraph")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{CALIB_FILE}.tmp"
    tmp.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    tmp.rename(dest / CALIB_FILE)
    return len(texts)


def prepare_calibration(dataset: str, work_dir: str | Path) -> tuple[str, dict]:
    """(the calib_dataset string to hand TensorRT-LLM, a record for the manifest). Checks first; writes a
    dataset directory under work_dir for bundled or file data."""
    kind = calibration_kind(dataset)
    if kind in ("bundled", "file"):
        target = Path(work_dir) / "calibration-dataset"
        count = write_calib_dir(dataset, target)
        return str(target), {"source": dataset, "kind": kind, "samples": count, "format": f"{CALIB_FILE} (text)"}
    resolved = str(Path(dataset).expanduser()) if kind == "dir" else dataset
    return resolved, {"source": dataset, "kind": kind}
