"""trtbuild: build, validate, benchmark and serve TensorRT-LLM engines of Mistral-7B-Instruct-v0.3."""

__version__ = "0.1.0"

DEFAULT_MODEL = "builtin:tiny-mistral"
REAL_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
