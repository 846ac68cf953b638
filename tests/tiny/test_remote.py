"""NDIF, proven offline: ``taskvec.load(folder, remote="local")`` runs every operation through
nnsight 0.8's local simulation of the remote backend (each request serialised, deserialised with
the modules a server lacks hidden, then run), and must give exactly what a local run gives, in
one request per operation. A second model keeps its weights on the meta device between
requests, as an NDIF user has them, so any weight read outside a request fails."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import pandas as pd
import pytest
import torch
from nnsight.intervention.backends.local import LocalSimulationBackend

import taskvec

TASK = taskvec.get_task("country-capital")
VAL, TEST = TASK.pairs("val")[:12], TASK.pairs("test")[:6]
SETTING = dict(n_shots=2, n_val=4, n_test=4, batch_size=4)


@pytest.fixture(scope="module")
def remote(tiny):
    return taskvec.load(tiny.name, remote="local")


@contextmanager
def requests():
    """Count the requests the simulated backend receives."""
    calls = []
    original = LocalSimulationBackend.__call__

    def counted(self, tracer):
        calls.append(type(tracer).__name__)
        return original(self, tracer)

    LocalSimulationBackend.__call__ = counted
    try:
        yield calls
    finally:
        LocalSimulationBackend.__call__ = original


def operations(m):
    """Every operation the issue names, on tiny settings: name -> result."""
    prompts = taskvec.sample_icl_prompts(VAL, TEST, n_shots=2)
    queries = taskvec.zero_shot(TEST)
    out = {}
    r = taskvec.lens(m, prompts, batch_size=4, progress=False)
    out["lens"], out["phases"] = r.df, r.phases({"answer": ["Paris"], "colon": [":"]}).df
    v = taskvec.extract_icl(m, VAL, n_shots=2, batch_size=4, progress=False)
    out["vector"], out["decode"] = v.vectors, taskvec.decode(m, v.vectors, layer=1)
    out["patch"] = taskvec.patch_predict(m, v, queries, 1, batch_size=4, progress=False)
    out["sweep"] = taskvec.layer_sweep(m, v, queries, batch_size=4, progress=False)
    out["transfer"] = taskvec.transfer_experiment(m, [TASK], [("text", "text")], taskvec.Setting(**SETTING),
                                                  progress=False)["summary"]
    fit = taskvec.fit_mtv(m, VAL, holdout=TEST, n_trials=4, n_shots=2, steps=2, n_masks=4, n_candidates=2,
                          batch_size=4, progress=False)
    out["mtv"] = taskvec.predict(m, queries, intervention=fit.intervention, progress=False)
    shape = (m.n_layers, m.n_heads, m.d_head)
    heads = taskvec.HeadIntervention(torch.randn(shape, generator=torch.Generator().manual_seed(0)),
                                     torch.rand(shape[:2], generator=torch.Generator().manual_seed(1)) > 0.5,
                                     m.name, "mtv")
    out["heads"] = taskvec.first_token_logits(m, queries, intervention=heads, progress=False)
    mimic = taskvec.MimIC.for_model(m)
    with torch.no_grad():
        for p in mimic.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    out["mimic"] = taskvec.first_token_logits(m, queries, intervention=mimic, progress=False)
    out["generate"] = taskvec.generate(m, queries[:2], intervention=heads, max_new_tokens=3)
    return out


def same(a, b):
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6)
        return True
    return a == b


@pytest.fixture(scope="module")
def local_results(tiny):
    torch.manual_seed(0)
    return operations(tiny)


def test_remote_local_gives_the_local_results(remote, local_results):
    assert remote.remote == "local" and remote.trace_kwargs() == {"remote": "local"}
    torch.manual_seed(0)
    with requests() as calls:
        got = operations(remote)
    assert calls, "no request went through nnsight's simulated remote backend"
    for name, value in local_results.items():
        assert same(value, got[name]), name


def test_one_request_per_operation_not_one_per_batch_and_layer(remote):
    queries = taskvec.zero_shot(TEST)  # 6 queries, batches of 2: 3 batches
    v = taskvec.extract_icl(remote, VAL, n_shots=2, batch_size=2, progress=False)
    with requests() as calls:
        taskvec.extract_icl(remote, VAL, n_shots=2, batch_size=2, progress=False)
    assert len(calls) == 1
    with requests() as calls:
        taskvec.layer_sweep(remote, v, queries, batch_size=2, progress=False)  # 3 batches x 3 layers
    assert len(calls) == 1
    with requests() as calls:
        taskvec.lens(remote, queries, batch_size=2, progress=False)  # one to read, one to decode
    assert len(calls) == 2
    with requests() as calls:
        taskvec.predict(remote, queries, batch_size=2, progress=False)
    assert len(calls) == 1


def test_taskvec_code_ships_by_value(remote, monkeypatch):
    """The server has no taskvec: with taskvec made unimportable while a request is deserialised
    (stricter than nnsight's simulation, which hides only modules outside site-packages), the
    functions used inside traces still arrive, because load() registered taskvec by value."""
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES

    assert "taskvec" in _PICKLE_BY_VALUE_MODULES

    class NoTaskvec:
        def find_spec(self, name, path=None, target=None):
            if name == "taskvec" or name.startswith("taskvec."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden: the server has no taskvec)")
            return None

    hide = LocalSimulationBackend._hide_local_modules

    def hide_taskvec(self):
        hidden = hide(self)
        for name in [n for n in sys.modules if n == "taskvec" or n.startswith("taskvec.")]:
            hidden["modules"][name] = sys.modules.pop(name)
        sys.meta_path.insert(0, NoTaskvec())
        return hidden

    restore = LocalSimulationBackend._restore

    def restore_taskvec(self, hidden):
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, NoTaskvec)]
        restore(self, hidden)

    monkeypatch.setattr(LocalSimulationBackend, "_hide_local_modules", hide_taskvec)
    monkeypatch.setattr(LocalSimulationBackend, "_restore", restore_taskvec)
    queries = taskvec.zero_shot(TEST)
    v = taskvec.extract_icl(remote, VAL, n_shots=2, batch_size=4, progress=False)
    preds = taskvec.patch_predict(remote, v, queries, 1, progress=False)
    assert len(preds) == len(queries)


def _swap(hf, store):
    """Put ``store``'s tensors into the model's modules; return what was there."""
    old = {}
    modules = dict(hf.named_modules())
    for (path, kind, name), tensor in store.items():
        table = getattr(modules[path], kind)
        old[(path, kind, name)] = table[name]
        table[name] = tensor
    return old


@contextmanager
def weights_on_meta(m):
    """The model's weights and buffers on the meta device except while a request runs (where the
    server's real weights are)."""
    meta = {}
    for path, module in m.hf.named_modules():
        for kind in ("_parameters", "_buffers"):
            for name, t in getattr(module, kind).items():
                if t is not None:
                    empty = torch.empty_like(t, device="meta")
                    meta[(path, kind, name)] = torch.nn.Parameter(empty, t.requires_grad) if kind == "_parameters" \
                        else empty
    real = _swap(m.hf, meta)
    original = LocalSimulationBackend.__call__

    def on_server(self, tracer):
        _swap(m.hf, real)
        try:
            return original(self, tracer)
        finally:
            _swap(m.hf, meta)

    LocalSimulationBackend.__call__ = on_server
    try:
        yield
    finally:
        LocalSimulationBackend.__call__ = original
        _swap(m.hf, real)


def test_nothing_reads_weights_outside_a_request(tiny, local_results):
    """An NDIF user's model has meta weights: every operation must still give the local results,
    so every weight read (decoding included) happens inside a request, on the server."""
    m = taskvec.load(tiny.name, remote="local")
    torch.manual_seed(0)
    with weights_on_meta(m):
        assert {p.device.type for p in m.hf.parameters()} == {"meta"}
        got = operations(m)
    for name, value in local_results.items():
        assert same(value, got[name]), name


def test_mimic_training_refuses_a_remote_model_and_says_why(remote):
    with pytest.raises(taskvec.TaskvecError, match="cannot train on a remote model.*MimIC.load"):
        taskvec.fit_mimic(remote, VAL, n_shots=2, steps=1)


def test_load_refuses_an_unknown_remote_mode(tiny):
    with pytest.raises(taskvec.TaskvecError, match="remote='ndif'.*True.*local"):
        taskvec.load(tiny.name, remote="ndif")


FRESH = r'''
import json, sys
import torch
from nnsight.schema.request import RequestModel
import taskvec

serialize = RequestModel.serialize
sizes = []


def measured(*args, **kwargs):
    blob = serialize(*args, **kwargs)
    sizes.append(len(blob))
    return blob


RequestModel.serialize = measured
m = taskvec.load(sys.argv[1], remote="local")
weights = sum(p.numel() * p.element_size() for p in m.hf.parameters())
r = taskvec.lens(m, ["Q:France\nA:Paris\n\nQ:Japan\nA:"], progress=False)  # the first request of the process
print(json.dumps({"rows": len(r.df), "sizes": sizes, "weights": weights}))
'''


def test_first_request_of_a_fresh_process(tiny_dir, tmp_path):
    """Issue 29: in a new process the first request pickled the whole transformers model by value
    (nnsight references a module by id only after its envoy is pickled, and ``Model.hf`` came
    first), which shipped the weights and, unpickled with the user's modules hidden, imported
    ``kernels`` -> ``anyio`` afresh inside the request, where nnsight's ``save`` broke it. A test
    that ran a local forward first hid it, so this one runs in a process of its own."""
    import json
    import subprocess

    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    done = subprocess.run([sys.executable, str(script), str(tiny_dir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["rows"] > 0 and out["sizes"], out
    # every request is small next to the weights it must never carry (tiny Llama: 25.7 MB before the fix)
    assert max(out["sizes"]) < out["weights"] / 10, out
