"""The benchmark harness (adain_ext/bench_harness.py) behind adain-ext bench, bench_ops.py and
gpu_bench.py: every provider computes what its name says, the shape sets are what the front ends
time, and the timer reads the device's clock only once the device has finished. No timing is
asserted."""
from __future__ import annotations

import pytest
import torch

from adain_ext import bench_harness as harness
from adain_ext import reference

CPU = torch.device("cpu")


def _biased_adain(content, style):
    """The content normalised with its biased variance, the style's unbiased statistics applied."""
    content_mean, content_std = reference.mean_std(content, harness.EPS, unbiased=False)
    style_mean, style_std = reference.mean_std(style, harness.EPS, unbiased=True)
    return (content - content_mean) / content_std * style_std + style_mean


def _uncompiled(name):
    """The provider's callable without compiling it (compiling takes longer than this file): the
    compiled providers wrap a function the other providers' checks cover."""
    fn = harness.PROVIDERS[name].make(CPU)
    if fn is not None and harness.PROVIDERS[name].compiled:
        fn = fn._torchdynamo_orig_callable
    return fn


@pytest.mark.parametrize("name", list(harness.PROVIDERS))
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 3, 11), (1, 2, 3, 4, 5)], ids=str)
def test_each_provider_computes_what_its_name_says(name, shape):
    fn = _uncompiled(name)
    if fn is None:
        pytest.skip(f"{name} does not run on CPU here")
    dtype = torch.float32 if name == "adain_ext_triton" else torch.float64
    content, style = harness.make_inputs(shape, CPU, dtype)
    want = (_biased_adain if harness.PROVIDERS[name].biased else reference.adain)(
        content.double(), style.double())
    unlike = (reference.adain if harness.PROVIDERS[name].biased else _biased_adain)(
        content.double(), style.double())
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    error = (fn(content, style).double() - want).abs().max().item()
    assert error < tolerance, f"{name}: max abs error {error:.2e} against what its name says"
    # The two semantics differ far beyond the tolerance on these short rows, so the check above
    # tells a biased provider from an exact one.
    assert (unlike - want).abs().max().item() > 100 * tolerance


def test_provider_names_are_unique_and_the_defaults_exist():
    assert len(harness.PROVIDERS) == len({name.lower() for name in harness.PROVIDERS})
    assert harness.OURS in harness.PROVIDERS
    assert set(harness.DEFAULT_PEERS) <= set(harness.PROVIDERS) - {harness.OURS}
    assert harness.PROVIDERS["compiled_reference"].make(CPU)._torchdynamo_orig_callable \
        is harness.eager_reference


def test_shape_sets_are_the_front_ends_shapes():
    assert harness.CPU_SHAPES[0] == harness.CUDA_SHAPES[0] == (8, 512, 32, 32)
    assert set(harness.CUDA_SHAPES) <= set(harness.GPU_SUITE_SHAPES)
    assert len(harness.GPU_SUITE_SHAPES) == 14 and len(harness.QUICK_SHAPES) == 5
    for shape_set in harness.SHAPE_SETS:
        found = harness.shapes(shape_set)
        assert len(set(found)) == len(found) and {len(s) for s in found} == {3, 4, 5}, shape_set
    assert harness.default_shapes(CPU) == harness.CPU_SHAPES


def test_runners_run_the_provider_in_their_direction():
    content, style = harness.make_inputs((1, 2, 4, 4), CPU, torch.float64, requires_grad=True)
    seen = []

    def provider(c, s):
        seen.append(torch.is_grad_enabled())
        return reference.adain(c, s)

    harness.forward_runner(provider, content, style)()
    assert seen == [False]  # the forward is timed without building a graph
    backward = harness.backward_runner(provider, content, style)
    backward()
    backward()  # replays the graph built once
    assert seen == [False, True]
    grad_out = torch.ones_like(content)
    harness.forward_backward_runner(provider, content, style, grad_out)()
    assert seen == [False, True, True]


class _FakeCuda:
    """Stands in for torch.cuda's events and synchronize, logging what the timer does."""

    def __init__(self, monkeypatch):
        self.log = []
        self.synchronized = 0
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing, "an event without timing has no elapsed_time"
                self.at = None

            def record(self):
                fake.log.append("record")
                self.at = len(fake.log)

            def elapsed_time(self, end):
                assert fake.log[-1] == "synchronize", "event read before the device finished"
                return float(end.at - self.at)  # "milliseconds": entries logged in between

        def synchronize(device=None):
            fake.log.append("synchronize")

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "synchronize", synchronize)

    def call(self):
        self.log.append("call")


def test_timer_uses_cuda_events_around_each_call_and_synchronizes(monkeypatch):
    fake = _FakeCuda(monkeypatch)
    seconds = harness.time_call(fake.call, torch.device("cuda"), repeats=3, warmup=2)
    assert fake.log == ["call", "call", "synchronize"] + ["record", "call", "record"] * 3 + [
        "synchronize"]
    assert seconds == pytest.approx(2 / 1e3)  # event milliseconds as seconds


def test_synchronized_waits_for_the_device(monkeypatch):
    fake = _FakeCuda(monkeypatch)
    harness.synchronized(fake.call, torch.device("cuda"))()
    assert fake.log == ["call", "synchronize"]
    assert harness.synchronized(fake.call, CPU) == fake.call


def test_measure_interleaves_two_rounds_and_keeps_the_lower_median(monkeypatch):
    order, times = [], iter([5.0, 3.0, 1.0, 4.0])

    def fake_time_call(run, device, repeats):
        order.append(run)
        return next(times)

    monkeypatch.setattr(harness, "time_call", fake_time_call)
    providers = {"a": reference.adain, "b": reference.adain}
    [(shape, direction, found)] = harness.measure([(1, 2, 3)], CPU, torch.float32, 1, ["forward"],
                                                  providers)
    assert (shape, direction) == ((1, 2, 3), "forward")
    assert order[0] is order[3] and order[1] is order[2]  # a, b, then b, a
    assert found == {"a": 4.0, "b": 1.0}


def _bench_blocks():
    """benchmarks/bench_blocks.py as a module (benchmarks/ is no package)."""
    import importlib.util
    import os
    import sys
    if "bench_blocks" in sys.modules:
        return sys.modules["bench_blocks"]
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "benchmarks", "bench_blocks.py")
    spec = importlib.util.spec_from_file_location("bench_blocks", path)
    module = sys.modules["bench_blocks"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its dataclass looks its module up in sys.modules
    return module


def test_block_benchmark_table_and_ratios():
    blocks = _bench_blocks()
    ms = {"eager reference": 8.0, "eager accelerated": 2.0, "compiled reference": 3.0,
          "compiled accelerated": 6.0}
    rows = [{"block": "stylegan", "mode": mode, "variant": v, "ms": t, "graph_breaks": 0}
            for mode in blocks.MODES for v, t in ms.items()]
    rows += [{"block": "generator", "mode": "forward+backward", "variant": v, "ms": t,
              "graph_breaks": 1 if v == "compiled accelerated" else 0} for v, t in ms.items()]
    [r1, r2, r3] = blocks.ratios(rows)
    assert (r1["mode"], r1["eager"], r1["compiled"]) == ("forward", 4.0, 0.5)
    assert r2["compiled_ref_over_eager_acc"] == 1.5 and r3["block"] == "generator"
    text = blocks.markdown({"machine": "test machine", "shape_note": "B=1", "rounds": 3,
                            "repeats": 2, "rows": rows})
    assert "test machine" in text
    assert "| StyleGAN-like generator training step | compiled accelerated | - | 6.00 (1 graph " \
           "breaks) |" in text
    assert "| forward | 4.00x | 0.50x | 1.50x |" in text


def test_block_benchmark_writes_the_committed_results_only_from_a_full_cpu_run(tmp_path,
                                                                              monkeypatch):
    """A partial run (some blocks, no generator) must not replace the committed full results;
    a full CPU run writes them; the device is named in the table."""
    blocks = _bench_blocks()
    monkeypatch.setattr(blocks, "RESULTS", str(tmp_path))
    monkeypatch.setattr(blocks, "warm_function_api", lambda device=None: None)
    monkeypatch.setattr(blocks, "bench_block", lambda *a, **k: [])
    monkeypatch.setattr(blocks, "bench_generator", lambda *a, **k: [])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    assert blocks.main(["--blocks", "op", "--no-generator"]) == 0
    assert blocks.main(["--no-generator"]) == 0
    assert list(tmp_path.iterdir()) == []
    assert blocks.main([]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks_cpu.json", "blocks_cpu.md"]
    assert (tmp_path / "blocks_cpu.md").read_text().startswith("Blocks on CPU: ")
    text = blocks.markdown({"device": "cuda", "machine": "H100", "shape_note": "B=1", "rounds": 1,
                            "repeats": 1, "rows": []})
    assert text.startswith("Blocks on CUDA: H100")


def test_block_benchmark_accelerates_every_block():
    """Each block is one accelerate() rewrites (make_case refuses one it leaves alone), with the
    reference's output and gradients (check_case), on a small shape."""
    blocks = _bench_blocks()
    for block in blocks.BLOCKS:
        blocks.check_case(blocks.make_case(block, batch=2, channels=3, size=4))


def test_write_report_replaces_a_planted_symlink_not_its_target(tmp_path, capsys):
    """Results go to the names given, whole: a symlink planted under a result's name is replaced
    by the file, and the file it pointed to keeps its bytes."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    md, js = tmp_path / "out.md", tmp_path / "out.json"
    md.symlink_to(victim)
    harness.write_report("| a |\n", {"x": 1}, str(md), str(js))
    assert victim.read_text() == "precious"
    assert not md.is_symlink() and md.read_text() == "| a |\n"
    assert js.read_text() == '{\n "x": 1\n}'
    assert "| a |" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.md", "victim.txt"]
