"""core.replace.fold, directly: the fold algebra on single projections, and ``write_folds`` on a
pruned tiny model's files. (The whole folded model against hooked maps, and identity maps against
plain removal, are in test_replace.py.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from layerprune.core.errors import SpecError
from layerprune.core.replace.fold import folded, write_folds
from layerprune.core.replace.plan import PARAM, Site
from layerprune.core.streaming import stream_prune
from tests.tiny import HIDDEN
from tests.torch_threads import one_thread  # noqa: F401


def _map(d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("bias", [True, False])
def test_folded_linear_computes_its_output_times_t(bias: bool) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(16, 8, bias=bias).double()
    t = _map(8, 1)
    x = torch.randn(5, 16, dtype=torch.float64)
    w, b = folded(lin.weight.data, lin.bias.data if bias else None, t, conv1d=False)
    out = x @ w.T + (b if bias else 0)
    torch.testing.assert_close(out, lin(x) @ t, rtol=1e-12, atol=1e-12)
    assert w.shape == lin.weight.shape and (b is None) == (not bias)


def test_folded_conv1d_computes_its_output_times_t() -> None:
    torch.manual_seed(0)
    conv = Conv1D(8, 16).double()  # GPT-2: weight [in=16, out=8], out = x·W + b
    nn.init.normal_(conv.bias)
    t = _map(8, 2)
    x = torch.randn(5, 16, dtype=torch.float64)
    w, b = folded(conv.weight.data, conv.bias.data, t, conv1d=True)
    torch.testing.assert_close(x @ w + b, conv(x) @ t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_folded_keeps_the_dtype_and_rounds_once(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(8, 16, generator=gen).to(dtype)
    bias = torch.randn(8, generator=gen).to(dtype)
    t = _map(8, 4)
    w, b = folded(weight, bias, t, conv1d=False)
    assert w.dtype == dtype and b.dtype == dtype
    # The float64 product of the stored values, rounded once to the stored dtype.
    assert torch.equal(w, (t.T @ weight.double()).to(dtype))
    assert torch.equal(b, (bias.double() @ t).to(dtype))
    # Composition: folding T then U is folding T·U, up to that rounding.
    u = _map(8, 5)
    w2, _ = folded(folded(weight.double(), None, t, conv1d=False)[0], None, u, conv1d=False)
    torch.testing.assert_close(w2, (t @ u).T @ weight.double(), rtol=1e-12, atol=1e-12)


def _digest(path: Path) -> dict[str, str]:
    return {k: hashlib.sha256(v.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for k, v in load_file(path).items()}


@pytest.mark.parametrize(("family", "prefix", "name", "conv1d", "has_bias"), [
    ("llama", "model.layers.", "mlp.down_proj", False, False),
    ("gpt2", "transformer.h.", "mlp.c_proj", True, True),
])
def test_write_folds_overwrites_only_the_folded_tensors(family: str, prefix: str, name: str, conv1d: bool,
                                                        has_bias: bool, tiny_dirs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    removed = [2, 3, 6]
    keep = [i for i in range(8) if i not in removed]  # block j of the output is keep[j] of the source
    stream_prune(tiny_dirs(family), out, removed)
    files = sorted(out.glob("*.safetensors"))
    # Cloned: load_file's tensors may map the file, which write_folds overwrites in place.
    before = {f: (f.stat().st_size, _digest(f), {k: v.clone() for k, v in load_file(f).items()}) for f in files}
    maps = {1: _map(HIDDEN, 11), 5: _map(HIDDEN, 12)}  # old indices 1 and 5 = new 1 and 3
    sites = [(Site(block=old, name=name, module=nn.Identity(), conv1d=conv1d), t) for old, t in maps.items()]
    written = write_folds(out, prefix, keep, sites)
    files_prefix = "h." if family == "gpt2" and not any(
        k.startswith("transformer.") for f in files for k in load_file(f)) else prefix
    assert written == [f"{files_prefix}1.{name}.weight", f"{files_prefix}3.{name}.weight"]
    changed = set(written) | ({w.replace(".weight", ".bias") for w in written} if has_bias else set())
    for f in files:
        size, digests, tensors = before[f]
        assert f.stat().st_size == size
        after = _digest(f)
        assert after.keys() == digests.keys()
        for key in digests:
            if key not in changed:
                assert after[key] == digests[key], key
            elif key.endswith("weight"):
                assert after[key] != digests[key], key  # (a tiny GPT-2's biases are zeros: they stay)
        new = load_file(f)
        for key in changed & new.keys():
            t = maps[keep[int(key[len(files_prefix):].split(".")[0])]]
            old = tensors[key].double()
            if key.endswith("bias"):
                want = old @ t
            else:  # Linear: out·T = x·(Tᵀ·W)ᵀ; Conv1D: out·T = x·(W·T)
                want = old @ t if conv1d else t.T @ old
            assert torch.equal(new[key], want.to(tensors[key].dtype)), key


def test_a_projection_missing_from_the_files_is_a_spec_error(tiny_dirs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    stream_prune(tiny_dirs("llama"), out, [7])
    site = Site(block=0, name="mlp.no_such_proj", module=nn.Identity(), conv1d=False)
    with pytest.raises(SpecError, match="no tensor model.layers.0.mlp.no_such_proj.weight") as err:
        write_folds(out, "model.layers.", list(range(7)), [(site, torch.eye(HIDDEN, dtype=torch.float64))])
    assert err.value.param == PARAM
