"""Where the weights go: ``device_map="auto"``, a layer offloaded to the CPU (accelerate moves its
weights in for each forward) and, on a machine with two GPUs, layers split across both. Every
operation must give what the CPU gives: each write lands on the device of the activation it meets."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import taskvec

from .helpers import AGREEMENT, DEVICE, QUERIES, agreement, devices, on_cpu

PROMPTS = [taskvec.icl_prompt([("France", "Paris"), ("Japan", "Tokyo")], "Italy"),
           taskvec.icl_prompt([("Peru", "Lima")], "Spain")]


@pytest.fixture(scope="module")
def folder(tiny_dirs) -> str:
    return str(tiny_dirs("llama"))


@pytest.fixture(scope="module")
def cpu(folder) -> taskvec.Model:
    return taskvec.load(folder)


def device_map(m: taskvec.Model, layers: dict[int, Any], rest: Any) -> dict[str, Any]:
    """A device map for ``m``'s modules: decoder layer ``i`` on ``layers.get(i, rest)``, every other
    module that holds weights or buffers on ``rest``."""
    prefix = m.arch.layers
    out: dict[str, Any] = {}
    for name, module in m.hf.named_modules():
        if name.startswith(prefix + "."):
            index = int(name[len(prefix) + 1:].split(".")[0])
            out[f"{prefix}.{index}"] = layers.get(index, rest)
        elif next(module.parameters(recurse=False), None) is not None or next(module.buffers(recurse=False), None) is not None:
            out[name] = rest
    return out


def _interventions(m: taskvec.Model) -> dict[str, Any]:
    """One intervention of each kind, writing at every layer (so at every device)."""
    gen = torch.Generator().manual_seed(0)
    shape = (m.n_layers, m.n_heads, m.d_head)
    mimic = taskvec.MimIC.for_model(m)
    with torch.no_grad():
        for p in mimic.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return {
        "patch": taskvec.TaskVector(torch.randn(m.n_layers, m.d_model, generator=gen), m.name, "custom", "tiny",
                                    1).patch(list(range(m.n_layers))),
        "heads": taskvec.HeadIntervention(torch.randn(shape, generator=gen), torch.ones(shape[:2], dtype=torch.bool),
                                          m.name, "mtv"),
        "mimic": mimic,
    }


def _same_as_cpu(m: taskvec.Model, cpu: taskvec.Model) -> None:
    """Lens, logits, extraction and every intervention kind give the CPU's numbers, on the CPU."""
    queries = taskvec.zero_shot(QUERIES)
    hidden = taskvec.lens(m, PROMPTS, progress=False).hidden
    on_cpu(hidden)
    torch.testing.assert_close(hidden, taskvec.lens(cpu, PROMPTS, progress=False).hidden, atol=1e-3, rtol=1e-3)
    v = taskvec.extract_icl(m, [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Peru", "Lima")],
                            n_shots=2, progress=False)
    ref = taskvec.extract_icl(cpu, [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Peru", "Lima")],
                              n_shots=2, progress=False)
    on_cpu(v.vectors)
    torch.testing.assert_close(v.vectors, ref.vectors, atol=1e-3, rtol=1e-3)
    for name, iv in {"none": None, **_interventions(cpu)}.items():
        got = taskvec.first_token_logits(m, queries, intervention=iv, progress=False)
        on_cpu(got)
        torch.testing.assert_close(got, taskvec.first_token_logits(cpu, queries, intervention=iv, progress=False),
                                   atol=1e-3, rtol=1e-3, msg=lambda msg: f"{name}: {msg}")
    iv = _interventions(cpu)["heads"]
    assert agreement(taskvec.generate(m, queries[:3], intervention=iv, max_new_tokens=3),
                     taskvec.generate(cpu, queries[:3], intervention=iv, max_new_tokens=3)) >= AGREEMENT


def test_device_map_auto(folder, cpu):
    m = taskvec.load(folder, device_map="auto")
    if DEVICE == "cuda":
        assert "cuda" in devices(m), devices(m)  # a tiny model fits on the first GPU: accelerate puts it all there
    _same_as_cpu(m, cpu)


def test_a_layer_offloaded_to_the_cpu(folder, cpu):
    main = 0 if DEVICE == "cuda" else "cpu"
    m = taskvec.load(folder, device_map=device_map(cpu, {1: "cpu"}, main))
    if DEVICE == "cuda":  # (transformers records a map only when it names several devices)
        assert m.hf.hf_device_map[f"{cpu.arch.layers}.1"] == "cpu" and "cuda" in devices(m)
    _same_as_cpu(m, cpu)


def test_layers_split_across_two_gpus(folder, cpu):
    if DEVICE != "cuda" or torch.cuda.device_count() < 2:
        pytest.skip(f"{torch.cuda.device_count() if DEVICE == 'cuda' else 0} CUDA device(s): splitting layers "
                    "across GPUs needs two")
    m = taskvec.load(folder, device_map=device_map(cpu, {i: 1 for i in range(cpu.n_layers // 2, cpu.n_layers)}, 0))
    layer_devices = {p.device for layer in m.hf.get_submodule(cpu.arch.layers) for p in layer.parameters()}
    assert layer_devices == {torch.device("cuda", 0), torch.device("cuda", 1)}, layer_devices
    _same_as_cpu(m, cpu)
