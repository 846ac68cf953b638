"""Where weights and batches go: processor options with the papers' defaults, ``load(device=)``
straight onto the device, and the batch-size backoff when a batch runs out of memory (forced
here by a hook that raises CUDA's out-of-memory error for batches above a size)."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

import taskvec
from taskvec.models.each_batch import BatchSizeWarning, out_of_memory
from taskvec.models.tiny import build_tiny

QUERIES = taskvec.zero_shot(taskvec.get_task("country-capital").pairs("test")[:6])
VAL = taskvec.get_task("country-capital").pairs("val")[:8]


@pytest.fixture(scope="module")
def idefics2_dir(tmp_path_factory):
    return build_tiny("idefics2", tmp_path_factory.mktemp("idefics2"))


def crops(m):
    prompt = taskvec.Prompt(f"{taskvec.IMAGE}Q:red\nA:", images=[Image.new("RGB", (64, 64), "red")])
    return m.encode([prompt]).inputs["pixel_values"].shape[1]


def test_idefics2_takes_one_crop_per_image_by_default_and_five_when_asked(idefics2_dir):
    """Both reference implementations set do_image_splitting=False; the hub processor splits."""
    assert crops(taskvec.load(str(idefics2_dir))) == 1
    assert crops(taskvec.load(str(idefics2_dir), processor_kwargs={"do_image_splitting": True})) == 5


def test_processor_kwargs_are_checked(tiny, idefics2_dir):
    with pytest.raises(taskvec.TaskvecError, match="not a dict"):
        taskvec.load(str(idefics2_dir), processor_kwargs=["do_image_splitting"])
    with pytest.raises(taskvec.TaskvecError, match="text-only model: it has no processor"):
        taskvec.load(tiny.name, processor_kwargs={"do_image_splitting": True})


def test_load_device_puts_weights_there_and_refuses_two_placements(tiny):
    m = taskvec.load(tiny.name, device="cpu")
    assert {p.device.type for p in m.hf.parameters()} == {"cpu"}
    assert taskvec.predict(m, QUERIES, progress=False) == taskvec.predict(tiny, QUERIES, progress=False)
    with pytest.raises(taskvec.TaskvecError, match="both say where the weights go"):
        taskvec.load(tiny.name, device="cpu", device_map="auto")


class ForcedOOM:
    """A forward pre-hook on layer 0 raising CUDA's out-of-memory error above ``limit`` rows."""

    def __init__(self, model, limit):
        self.limit, self.sizes = limit, []
        self.handle = model.hf.model.layers[0].register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        rows = (args[0] if args else kwargs["hidden_states"]).shape[0]
        self.sizes.append(rows)
        if rows > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({rows} rows, forced)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_batch_size_backs_off_on_out_of_memory_and_results_do_not_change(tiny):
    expected = taskvec.predict(tiny, QUERIES, batch_size=8, progress=False)
    vector = taskvec.extract_icl(tiny, VAL, n_shots=2, batch_size=8, progress=False)
    sweep = taskvec.layer_sweep(tiny, vector, QUERIES, batch_size=8, progress=False)
    with ForcedOOM(tiny, limit=2) as oom, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = taskvec.predict(tiny, QUERIES, batch_size=8, progress=False)
        got_vector = taskvec.extract_icl(tiny, VAL, n_shots=2, batch_size=8, progress=False)
        got_sweep = taskvec.layer_sweep(tiny, vector, QUERIES, batch_size=8, progress=False)
    assert got == expected
    assert torch.allclose(got_vector.vectors, vector.vectors, atol=1e-5)
    order = ["layer", "query"]  # rows come batch by batch: smaller batches interleave layers differently
    assert got_sweep.sort_values(order).reset_index(drop=True).equals(sweep.sort_values(order).reset_index(drop=True))
    assert oom.sizes[:3] == [6, 4, 2]  # predict tried the whole batch, then 4, then went on with 2
    told = [str(w.message) for w in caught if issubclass(w.category, BatchSizeWarning)]
    assert any("forward: batch_size=8 ran out of memory" in t and "going on with batch_size=4" in t for t in told)
    assert any("layer sweep" in t for t in told) and any("extract" in t for t in told)


def test_other_errors_are_not_taken_for_out_of_memory(tiny):
    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert out_of_memory(RuntimeError("wrapped")) is False
    wrapped = RuntimeError("trace failed")
    wrapped.__cause__ = torch.OutOfMemoryError("CUDA out of memory")
    assert out_of_memory(wrapped)

    def fail(module, args, kwargs):
        raise ValueError("not memory")

    handle = tiny.hf.model.layers[0].register_forward_pre_hook(fail, with_kwargs=True)
    try:
        with pytest.raises(Exception, match="not memory"):
            taskvec.predict(tiny, QUERIES, batch_size=8, progress=False)
    finally:
        handle.remove()


def test_a_batch_of_one_that_does_not_fit_raises(tiny):
    with ForcedOOM(tiny, limit=0), warnings.catch_warnings():
        warnings.simplefilter("ignore", BatchSizeWarning)
        with pytest.raises(Exception, match="out of memory"):
            taskvec.predict(tiny, QUERIES[:2], batch_size=2, progress=False)
