"""trtbuild.runtime.mistral (the plain-torch Mistral the torch runtime serves and the tiny model trains)
against transformers' MistralForCausalLM, and the tiny model's document-masked training windows."""

from __future__ import annotations

import pytest
import torch
from helpers import one_thread  # noqa: F401  (autouse: one intra-op thread for this module)

from trtbuild.errors import TrtbuildError
from trtbuild.runtime.mistral import MistralConfig, MistralForCausalLM
from trtbuild.tiny_model import TinyRecipe, _document_windows, mistral_config


@pytest.fixture(scope="module")
def pair():
    """A transformers model with random weights (its own initialisation) and ours holding the same weights."""
    import transformers

    torch.manual_seed(0)
    config = mistral_config(TinyRecipe())
    reference = transformers.MistralForCausalLM(config).eval()
    ours = MistralForCausalLM(MistralConfig.from_dict(config.to_dict())).eval()
    ours.load_state_dict(reference.state_dict())  # strict: every name matches, none is missing or extra
    return reference, ours


def test_parameter_names_are_transformers_names(pair):
    reference, ours = pair
    assert list(ours.state_dict()) == list(reference.state_dict())


def test_causal_forward_matches_transformers(pair):
    reference, ours = pair
    ids = torch.randint(32768, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.model(input_ids=ids).last_hidden_state
        got = ours.model(ours.model.embed_tokens(ids))
    # The same float32 operations in the same order: equal up to the kernels' own rounding (a few ulps of
    # activations of size ~1; measured 0 on one machine, the bound leaves room for other CPUs' kernels).
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_document_mask_makes_each_document_its_own_sequence(pair):
    """Two documents packed in one window, masked, give each the hidden states it has alone from position 0."""
    _, ours = pair
    first, second = torch.randint(32768, (1, 7)), torch.randint(32768, (1, 9))
    packed = torch.cat([first, second], dim=1)
    positions = torch.tensor([[*range(7), *range(9)]])
    same_doc = torch.tensor([0] * 7 + [1] * 9)
    mask = ((same_doc[:, None] == same_doc[None, :]) & torch.ones(16, 16, dtype=torch.bool).tril())[None, None]
    with torch.no_grad():
        together = ours.model(ours.model.embed_tokens(packed), positions, mask)
        alone = [ours.model(ours.model.embed_tokens(doc)) for doc in (first, second)]
    # Masked keys add exact zeros to the softmax; what differs is summation order over more keys (ulps).
    assert torch.allclose(together[:, :7], alone[0], atol=1e-5, rtol=0)
    assert torch.allclose(together[:, 7:], alone[1], atol=1e-5, rtol=0)
    unmasked = ours.model(ours.model.embed_tokens(packed)).detach()
    assert not torch.allclose(unmasked[:, 7:], alone[1], atol=1e-2)  # without the mask the second one differs


def test_document_windows_restart_positions_and_block_attention():
    documents = [[1, 10, 11, 2], [1, 12, 2], [1, 13, 14, 15, 2], [1, 16, 2]]
    windows = _document_windows(documents, seq_len=6)
    assert windows.count == 3  # windows start at a document's first token and need seq_len + 1 tokens after it
    tokens, positions, mask = windows(torch.tensor([1, 0]))
    assert tokens.tolist() == [[1, 12, 2, 1, 13, 14, 15], [1, 10, 11, 2, 1, 12, 2]]
    assert positions.tolist() == [[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 0, 1]]
    assert mask.shape == (2, 1, 6, 6)
    row = mask[0, 0]
    assert row[4].tolist() == [False, False, False, True, True, False]  # 13 sees its document's 1 and itself
    assert row[2].tolist() == [True, True, True, False, False, False]  # causal within the first document


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llama"}, "the torch backend runs Mistral"),
    ({"sliding_window": 4096}, "sliding-window attention"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling 'yarn'"),
])
def test_config_refuses_what_the_forward_would_compute_differently(change, message):
    raw = {**mistral_config(TinyRecipe()).to_dict(), **change}
    with pytest.raises(TrtbuildError, match=message):
        MistralConfig.from_dict(raw)


def test_config_reads_the_7b_and_transformers_5_rope_layout():
    import json
    from importlib import resources

    raw = json.loads((resources.files("trtbuild") / "data" / "mistral-7b-instruct-v0.3.config.json").read_text())
    config = MistralConfig.from_dict(raw)
    assert (config.num_hidden_layers, config.num_key_value_heads, config.head_dim, config.rope_theta) == (32, 8, 128, 1e6)
    nested = {k: v for k, v in raw.items() if k != "rope_theta"}
    nested["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e5}
    assert MistralConfig.from_dict(nested).rope_theta == 5e5
