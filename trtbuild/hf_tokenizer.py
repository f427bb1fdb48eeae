"""The Hugging Face fast tokenizer (tokenizer.json) that TensorRT-LLM's guided decoding reads.

TensorRT-LLM 1.2's TensorRT backend hands xgrammar the vocabulary of the LLM's own tokenizer:
`_TrtLLM._build_model` (tensorrt_llm/llmapi/llm.py@4c05a74891e4df8066f08ed4ce14b0972abe4e25) builds
`GuidedDecodingConfig(backend=XGRAMMAR, **_xgrammar_tokenizer_info(self.tokenizer))`, and
`_xgrammar_tokenizer_info` (tensorrt_llm/llmapi/tokenizer.py@89fd9b74ab7ae753b4c6b3db25a400dca7ea54a0)
accepts a transformers PreTrainedTokenizerFast only (its vocabulary sorted by id, its
backend_tokenizer.to_str(), eos as the stop token; a tiktoken vocabulary aside): a SentencePiece file
alone is "Unsupported tokenizer type". Mistral's hub repositories ship tokenizer.json, which
compile.copy_tokenizer copies into every engine directory. A source with only a SentencePiece model (the
embedded model) gets one converted here: transformers' LlamaTokenizerFast from the .model(.v3) file,
Metaspace with prepend "first", byte fallback, control pieces as special added tokens. Its ids are the
SentencePiece ids (checked, all of them); it encodes like mistral-common except where every Hugging Face
Mistral tokenizer differs from it (runs of spaces, a typed "[INST]"). trtbuild never encodes with it:
TensorRT-LLM only reads its vocabulary, and we hand it token ids.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from trtbuild.errors import TrtbuildError
from trtbuild.tokenizer import TOKENIZER_FILES

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
WRITTEN = (*HF_TOKENIZER_FILES, "special_tokens_map.json")


def has_hf_tokenizer(directory: str | Path) -> bool:
    """Whether `directory` holds a Hugging Face fast tokenizer that AutoTokenizer loads without the model's
    config.json (tokenizer_config.json names its class): what TensorRT-LLM's tokenizer_factory(dir) reads."""
    return all((Path(directory) / name).is_file() for name in HF_TOKENIZER_FILES)


def write_hf_tokenizer(directory: str | Path) -> bool:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json converted from the
    directory's SentencePiece model, unless it has a Hugging Face tokenizer already. True when it wrote."""
    directory = Path(directory)
    if has_hf_tokenizer(directory):
        return False
    model = next((directory / name for name in TOKENIZER_FILES if (directory / name).is_file()), None)
    if model is None:
        raise TrtbuildError(f"{directory} has neither tokenizer.json nor a SentencePiece model to convert")
    from transformers import LlamaTokenizerFast

    from trtbuild.tokenizer import Tokenizer

    hf = LlamaTokenizerFast(vocab_file=str(model), legacy=False, from_slow=True, add_prefix_space=True)
    ours = Tokenizer.from_model_dir(directory)
    pieces = hf.convert_ids_to_tokens(list(range(ours.vocab_size)))
    wrong = [i for i, piece in enumerate(pieces) if piece != ours.id_to_piece(i)]
    if len(hf) != ours.vocab_size or wrong:
        raise TrtbuildError(f"the Hugging Face tokenizer converted from {model.name} disagrees with it on "
                            f"{len(wrong) or 'the size of'} token ids (first: {wrong[:3]}); add a tokenizer.json")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        hf.save_pretrained(tmp, legacy_format=False)  # the fast tokenizer only (no second SentencePiece copy)
        config_path = Path(tmp) / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        # tokenizer.json already prepends "▁"; with this key transformers would convert from the slow
        # tokenizer again on every load, which needs the SentencePiece file under another name
        config.pop("add_prefix_space", None)
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
        for name in WRITTEN:
            if (Path(tmp) / name).is_file() and not (directory / name).exists():
                shutil.move(str(Path(tmp) / name), directory / name)
    return True
