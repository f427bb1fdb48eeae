"""The torch runtime's C kernels (trtbuild/runtime/*.c) against the torch, oneDNN and numpy ops they
replace, and their build (trtbuild.runtime.native): where it goes, what names it, what happens without a
compiler. The draw's own tests (test_sampling.py, test_lm_head.py) run on both implementations."""

from __future__ import annotations

import logging
import stat
import tempfile

import numpy as np
import pytest
import torch

import trtbuild.runtime.draw as draw_module
from trtbuild.runtime import native
from trtbuild.runtime.draw import COLUMNS, LOG2_E, PlainDraw


@pytest.fixture
def kernels_dir(monkeypatch, tmp_path):
    """cpu_kernels() from scratch, building into this test's own workspace."""
    monkeypatch.setenv("TRTBUILD_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("CC", raising=False)
    native.cpu_kernels.cache_clear()
    yield tmp_path / "ws" / "kernels"
    native.cpu_kernels.cache_clear()


def c_and_torch(temperatures, bans=None) -> tuple[PlainDraw, PlainDraw]:
    c = PlainDraw(temperatures, bans)
    assert c._kernels is not None, "the C kernels did not build: is a C compiler (cc, gcc) installed?"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(draw_module, "cpu_kernels", lambda: None)
        return c, PlainDraw(temperatures, bans)


def awkward_logits(vocab: int, seed: int) -> torch.Tensor:
    """6 rows: a NaN logit (row 1), a first block with nothing allowed (row 2), a block far below (row 4)."""
    x = torch.randn(6, vocab, generator=torch.Generator().manual_seed(seed)) * 4
    x[1, 5] = float("nan")
    x[2, :min(COLUMNS, vocab)] = float("-inf")
    if vocab > COLUMNS:
        x[4, COLUMNS:] -= 60.0
    return x


TEMPERATURES, BANS = [1.0, 0.5, 2.0, 1.0, 0.7, 1.3], [[3], [], [], [0, 1], [], [7, 999]]  # rows 1, 2: see awkward_logits


@pytest.mark.parametrize("vocab", [1000, 8192, 10000])  # one partial block; whole blocks; partial block and group
def test_the_c_block_pass_computes_what_the_torch_ops_compute(vocab):
    x = awkward_logits(vocab, vocab)
    c, ops = c_and_torch(TEMPERATURES, BANS)
    for first in range(0, vocab, COLUMNS):
        # columns of a wider tensor, so rows are strided as in the sampler's tests
        got_p, got_top, got_sums = c.block(x.clone()[:, first:first + COLUMNS], first)
        want_p, want_top, want_sums = ops.block(x.clone()[:, first:first + COLUMNS], first)
        assert torch.equal(got_top.nan_to_num(nan=7.0), want_top.nan_to_num(nan=7.0)), first  # the max: exact
        assert torch.equal(got_p.isnan(), want_p.isnan()) and torch.equal(got_sums.isnan(), want_sums.isnan())
        # each exp2 is within 1.7e-7 (this kernel) and 1 ulp (torch's) of exact; below 2^-126 the kernel
        # gives 0 where torch gives subnormals
        torch.testing.assert_close(got_p, want_p, rtol=3e-7, atol=2.0 ** -126, equal_nan=True)
        # float32 sums of up to 256 positive terms, added in another order: at most ~255 half-ulps apart
        torch.testing.assert_close(got_sums, want_sums, rtol=2e-5, atol=0, equal_nan=True)
        banned = [(row, column - first) for row, ids in enumerate(BANS) for column in ids if first <= column < first + COLUMNS]
        assert all(got_p[row, column] == 0 for row, column in banned)


def test_the_kernels_exp2_is_within_two_ulps_of_exact():
    """At T = log2(e) the block's probabilities are 2 ** (x - max): the kernel's exp2 itself."""
    y = np.concatenate([[0.0], np.linspace(-126.0, 0.0, 4095)]).astype(np.float32)
    low = np.array([0.0, -126.5, -200.0, -np.inf], dtype=np.float32)  # under 2^-126, and a banned token
    draw, _ = c_and_torch([LOG2_E])
    probs, top, _ = draw.block(torch.from_numpy(y.copy())[None, :], 0)
    exact = 2.0 ** y.astype(np.float64)
    # the polynomial's 1.03e-7 in float32, plus rounding the product by 2^n: two ulps (2.4e-7)
    assert float(top) == 0.0 and np.max(np.abs(probs[0].numpy() / exact - 1)) <= 2.4e-7
    assert draw.block(torch.from_numpy(low)[None, :], 0)[0].tolist() == [[1.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("vocab", [1000, 10000, 32768])
def test_the_c_draw_across_blocks_picks_what_numpy_picks(vocab, monkeypatch):
    """draw_tokens (C) takes the numpy version's float64 steps in the same order: the same token for every
    uniform, and the same fallback (the best token) for the rows without a distribution."""
    x = awkward_logits(vocab, 7 + vocab)
    draw, _ = c_and_torch(TEMPERATURES, BANS)
    blocked = draw.join([draw.block(x.clone()[:, c:c + COLUMNS], c) for c in range(0, vocab, COLUMNS)])
    whole = draw.whole(x.clone())
    rng = np.random.default_rng(vocab)
    uniforms = [rng.random(6) for _ in range(200)] + [np.zeros(6), np.full(6, np.nextafter(1.0, 0.0))]
    got = [draw.tokens(drawn, u) for drawn in (blocked, whole) for u in uniforms]
    monkeypatch.setattr(draw, "_kernels", None)
    want = [draw.tokens(drawn, u) for drawn in (blocked, whole) for u in uniforms]
    for (got_tokens, got_ok), (want_tokens, want_ok) in zip(got, want):
        assert got_tokens.tolist() == want_tokens.tolist() and got_ok.tolist() == want_ok.tolist()
    # the NaN row falls back, and so does the row with nothing allowed where its first block is all of it
    assert got[0][1].tolist() == [True, False, vocab > COLUMNS, True, True, True]


def test_the_kernels_build_once_into_the_workspace(kernels_dir):
    assert native.cpu_kernels() is not None
    built = list(kernels_dir.iterdir())
    assert len(built) == 1 and built[0].name.startswith("cpu_kernels-") and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    native.cpu_kernels.cache_clear()
    assert native.cpu_kernels() is not None  # a new process: loads the file, builds nothing
    assert list(kernels_dir.iterdir()) == built and built[0].stat().st_mtime_ns == stamp


def test_other_flags_build_another_library(kernels_dir, monkeypatch):
    first = native.build()
    monkeypatch.setattr(native, "compile_flags", lambda: ["-O2", "-std=gnu11", "-shared", "-fPIC"])
    second = native.build()
    assert first != second and sorted(kernels_dir.iterdir()) == sorted([first, second])


@pytest.mark.parametrize("cpu, wanted", [({"avx2", "fma", "sse4_2"}, True), ({"avx2"}, False), (set(), False)])
def test_avx2_and_fma_only_where_the_cpu_has_both(monkeypatch, cpu, wanted):
    monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(native, "_cpu_flags", lambda: cpu)
    flags = native.compile_flags()
    assert ("-mavx2" in flags and "-mfma" in flags) is wanted and "-march=native" not in flags


def test_without_a_compiler_the_draw_uses_torch_ops(kernels_dir, monkeypatch, caplog):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with caplog.at_level(logging.WARNING, logger="trtbuild.runtime"):
        assert native.cpu_kernels() is None
    assert "the C kernels are not available" in caplog.text and "/nonexistent/cc" in caplog.text
    assert not kernels_dir.exists()
    draw = PlainDraw([1.0, 0.5])
    x = torch.randn(2, 5000, generator=torch.Generator().manual_seed(0))
    tokens, ok = draw.tokens(draw.whole(x.clone()), np.array([0.3, 0.8]))
    want = [int(np.searchsorted(torch.softmax(x[r].double() / t, -1).cumsum(0).numpy(), u, side="right"))
            for r, (t, u) in enumerate([(1.0, 0.3), (0.5, 0.8)])]
    assert draw._kernels is None and ok.all() and tokens.tolist() == want


def test_a_failing_build_leaves_nothing_behind(kernels_dir, monkeypatch, tmp_path):
    """A compiler that writes part of its output and fails: one error that carries its message, and no
    file in kernels/ that a later process could load."""
    cc = tmp_path / "bad-cc"
    cc.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "bad-cc 1.0"; exit 0; }\n'
                  'while [ "$1" != -o ]; do shift; done; echo half > "$2"; echo "error: out of luck" >&2; exit 1\n')
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(cc))
    with pytest.raises(RuntimeError, match="out of luck"):
        native.build()
    assert list(kernels_dir.iterdir()) == []
    assert native.cpu_kernels() is None


@pytest.mark.parametrize("value", ["0", "off", " False "])
def test_turned_off_it_builds_nothing(kernels_dir, monkeypatch, value):
    monkeypatch.setenv("TRTBUILD_NATIVE", value)
    assert native.cpu_kernels() is None and not kernels_dir.exists()


def test_a_workspace_it_cannot_write_gets_a_temporary_build(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TRTBUILD_WORKSPACE", str(blocker / "ws"))  # under a file: mkdir fails
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    native.cpu_kernels.cache_clear()
    try:
        assert native.cpu_kernels() is not None
    finally:
        native.cpu_kernels.cache_clear()
    assert list((tmp_path / "tmp").iterdir()) == []  # loaded, then removed
