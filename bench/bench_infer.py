"""Sparse inference on CPU and deployment sizes: dense torch vs ONNX Runtime dense vs ``acdc.deploy`` CSR path.

Run (2-core CPU, a few minutes)::

    .venv/bin/python bench/bench_infer.py                       # everything
    .venv/bin/python bench/bench_infer.py --only linear,lm --threads 1
    .venv/bin/python bench/bench_infer.py --only sizes --sparsities 0.8,0.9,0.95,0.98

Workloads (random weights pruned by per-layer magnitude, ``acdc.masks.uniform_magnitude``, at ``--sparsity``):

* ``linear``  : a stack of ``--depth`` 4096x4096 Linear layers (ReLU between) at batch 1 and 64;
* ``lm``      : the project's Transformer LM in the shape of the WikiText recipe (16 layers, d_model 410, 10 heads,
  context 128, vocabulary ``--vocab``), token embedding and tied head dense as in the recipe: one forward over a
  full 128-token window, and batch-1 next-token decoding with a KV cache at position 128: ORT runs the ONNX graph
  of ``acdc.deploy.decode.lm_step`` (cache in, ``Concat``, cache out: what an ONNX export of a step is), torch
  runs ``acdc.deploy.KVDecoder`` (preallocated cache, single-row path) on the dense and the CPU-sparse model;
  the CPU-sparse model through ``lm_step`` (same Concat as the ORT graph) is printed too;
* ``resnet``  : ResNet-20 (32x32) and ResNet-50 (224x224) whole-model times, plus the per-layer-type split from
  the CPU path's own per-layer timings (3x3 convs always stay dense);
* ``sizes``   : ResNet-50 file sizes at each of ``--sparsities``: dense safetensors, compressed (bitmask), compressed
  + gzip, ONNX dense, ONNX with sparse initializers; and the load time of compressed vs dense safetensors, hot
  (file in the page cache) and cold (file evicted with ``posix_fadvise(DONTNEED)`` before every load, eviction
  checked with ``mincore``: what loading a model from disk once costs).

Every timing is a median over ``--repeats`` calls; the three engines are interleaved call by call, so load on the
shared machine hits them alike. torch and ONNX Runtime use the same number of intra-op threads (``--threads``).
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acdc import masks as M
from acdc import models
from acdc.deploy import to_cpu_sparse
from acdc.deploy.decode import KVDecoder, lm_step
from acdc.export import export_onnx, load_compressed, save_compressed
from acdc.targets import prunable_parameters
from acdc.train.checkpoint import load_model, save_model


def prune(model: nn.Module, sparsity: float, exclude: list[str] | None = None) -> nn.Module:
    params = prunable_parameters(model, exclude=exclude)
    masks = M.uniform_magnitude(params, sparsity)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(torch.where(masks[n], p, torch.zeros(())))
    return model.eval()


def ort_session(model: nn.Module, x: torch.Tensor, tmp: Path, threads: int):
    import onnxruntime as ort

    path = tmp / f"m{id(model)}.onnx"
    export_onnx(model, x, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    return lambda: sess.run(None, feed)


def interleaved(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median seconds per callable, called round-robin after one warm-up each."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for f in fns.values():
            f()
        for _ in range(repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def compare(label: str, model: nn.Module, x: torch.Tensor, tmp: Path, threads: int, repeats: int) -> nn.Module:
    fast = to_cpu_sparse(model, x, repeats=max(5, repeats // 2))
    ort = ort_session(model, x, tmp, threads)
    with torch.inference_mode():
        ref = model(x)
        err = float((fast(x) - ref).abs().max())
        ort_err = float((torch.from_numpy(ort()[0]) - ref).abs().max())
    t = interleaved({"torch dense": lambda: model(x), "ORT dense": ort, "acdc cpu-sparse": lambda: fast(x)}, repeats)
    csr = sum(p["chosen"] == "csr" for p in fast.cpu_sparse_plan)
    print(f"{label}: torch dense {1e3 * t['torch dense']:.2f} ms | ORT dense {1e3 * t['ORT dense']:.2f} ms | "
          f"cpu-sparse {1e3 * t['acdc cpu-sparse']:.2f} ms -> {t['ORT dense'] / t['acdc cpu-sparse']:.2f}x ORT "
          f"dense, {t['torch dense'] / t['acdc cpu-sparse']:.2f}x torch dense ({csr}/{len(fast.cpu_sparse_plan)} "
          f"layers CSR; max |diff| vs torch: cpu-sparse {err:.1e}, ORT {ort_err:.1e})", flush=True)
    return fast


def bench_linear(a, tmp: Path) -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(a.depth):
        layers += [nn.Linear(4096, 4096), nn.ReLU()]
    model = prune(nn.Sequential(*layers), a.sparsity)
    for b in (1, 64):
        compare(f"{a.depth}x Linear 4096x4096 @ {a.sparsity:.0%}, batch {b}", model, torch.randn(b, 4096), tmp,
                a.threads, a.repeats)


class _DecodeStep(nn.Module):
    """One KV-cached decoding step with stacked caches, so ONNX Runtime can run exactly what lm_step does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor):
        past = [(past_k[i], past_v[i]) for i in range(len(self.model.blocks))]
        logits, present = lm_step(self.model, tokens, past)
        return logits, torch.stack([k for k, _ in present]), torch.stack([v for _, v in present])


def bench_lm(a, tmp: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = models.build("transformer_lm", a.vocab, n_layers=16, n_heads=10, d_model=410, context=128)
    prune(model, a.sparsity, exclude=["tok_emb.weight"])
    label = f"Transformer LM 16x410 vocab {a.vocab} @ {a.sparsity:.0%} (embedding/head dense)"
    compare(f"{label}, full forward of a 128-token window (no cache), batch 1", model,
            torch.randint(0, a.vocab, (1, 128)), tmp, a.threads, max(3, a.repeats // 3))
    # batch-1 next-token decoding with a KV cache: token 128 after a 127-token prefix
    tok = torch.randint(0, a.vocab, (1, 1))
    prefix = torch.randint(0, a.vocab, (1, 127))
    with torch.inference_mode():
        _, past = lm_step(model, prefix)
    pk, pv = torch.stack([k for k, _ in past]), torch.stack([v for _, v in past])
    fast = to_cpu_sparse(model, tok, repeats=max(5, a.repeats // 2))
    path = tmp / "step.onnx"
    with torch.no_grad():
        torch.onnx.export(_DecodeStep(model).eval(), (tok, pk, pv), str(path), dynamo=False, opset_version=17,
                          input_names=["tokens", "past_k", "past_v"], output_names=["logits", "k", "v"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = a.threads, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"tokens": tok.numpy(), "past_k": pk.numpy(), "past_v": pv.numpy()}
    decoders = {}
    for name, m in (("dense", model), ("sparse", fast)):  # the same 127-token prefix in a preallocated cache
        decoders[name] = KVDecoder(m)
        decoders[name].step(prefix)

    def kv_step(name: str):  # one token at position 128, then drop it again: every call is the same step
        logits = decoders[name].step(tok)
        decoders[name].length -= 1
        return logits

    with torch.inference_mode():
        ref = lm_step(model, tok, past)[0]
        err = float((kv_step("sparse") - ref).abs().max())
        err_cat = float((lm_step(fast, tok, past)[0] - ref).abs().max())
        ort_err = float((torch.from_numpy(sess.run(None, feed)[0]) - ref).abs().max())
    t = interleaved({"ORT dense": lambda: sess.run(None, feed), "torch dense": lambda: kv_step("dense"),
                     "acdc cpu-sparse": lambda: kv_step("sparse"),
                     "cpu-sparse lm_step": lambda: lm_step(fast, tok, past)}, a.repeats)
    csr = sum(p["chosen"] == "csr" for p in fast.cpu_sparse_plan)
    print(f"{label}, batch-1 next-token decoding with KV cache (position 128): ORT dense "
          f"{1e3 * t['ORT dense']:.2f} ms (ONNX graph of lm_step: Concat of each layer's cache) | acdc.deploy "
          f"KVDecoder (preallocated cache, row path): torch dense {1e3 * t['torch dense']:.2f} ms, cpu-sparse "
          f"{1e3 * t['acdc cpu-sparse']:.2f} ms -> {t['ORT dense'] / t['acdc cpu-sparse']:.2f}x ORT dense | "
          f"cpu-sparse through lm_step (Concat like the ORT graph) {1e3 * t['cpu-sparse lm_step']:.2f} ms -> "
          f"{t['ORT dense'] / t['cpu-sparse lm_step']:.2f}x ORT dense ({csr}/{len(fast.cpu_sparse_plan)} layers "
          f"CSR; max |diff| vs torch lm_step: KVDecoder {err:.1e}, lm_step {err_cat:.1e}, ORT {ort_err:.1e})",
          flush=True)


def bench_resnet(a, tmp: Path) -> None:
    for name, shape, batches in (("resnet20", (3, 32, 32), (1, 64)), ("resnet50", (3, 224, 224), (1, 8))):
        torch.manual_seed(0)
        model = prune(models.build(name, 10 if name == "resnet20" else 1000), a.sparsity)
        for b in batches:
            x = torch.randn(b, *shape)
            fast = compare(f"{name} @ {a.sparsity:.0%}, batch {b}", model, x, tmp, a.threads,
                           max(3, a.repeats // 3))
            by_type: dict[str, list[float]] = {}
            for p in fast.cpu_sparse_plan:
                if "dense_ms" in p:
                    d = by_type.setdefault(p["type"], [0.0, 0.0, 0])
                    d[0] += p["dense_ms"]
                    d[1] += p["csr_ms"] if p["chosen"] == "csr" else p["dense_ms"]
                    d[2] += p["chosen"] == "csr"
            for kind, (dms, cms, n) in by_type.items():
                print(f"    {kind:8s}: dense {dms:.2f} ms -> chosen {cms:.2f} ms ({dms / cms:.2f}x, {n} CSR); "
                      "3x3 convs, BN, pooling: dense (not CSR candidates)", flush=True)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


def resident_fraction(path: Path) -> float:
    """Fraction of ``path``'s pages in the page cache (``mincore`` on a shared read-only mapping; Linux)."""
    libc, size = _libc(), path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        vec = (ctypes.c_ubyte * pages)()
        rc = libc.mincore(ctypes.c_void_p(addr), size, vec)
        libc.munmap(ctypes.c_void_p(addr), size)
        if rc:
            raise OSError(ctypes.get_errno(), "mincore failed")
    finally:
        os.close(fd)
    return sum(v & 1 for v in bytes(vec)) / pages


def evict(path: Path) -> None:
    """Drop ``path`` from the page cache (flushed first: only clean pages can be dropped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_loads(model: nn.Module, dense: Path, comp: Path, repeats: int) -> dict[str, Any]:
    """Median load times of the dense and the compressed file, each pass interleaving the two call by call: ``hot``
    (files in the page cache as written), ``hot2`` (the same at 2 threads: ``torch.set_num_threads(2)`` for both
    loaders, ``load_compressed(threads=2)``), ``cold`` (each file evicted before each of its loads, untimed),
    ``reread`` (hot again, the page cache now filled by the cold reads); all but ``hot2`` at 1 thread. Also the
    median minor page faults per pass, and the largest resident fraction seen right before a cold load (0.0 =
    eviction confirmed by ``mincore``)."""
    times: dict[str, list[float]] = {}
    faults: dict[str, list[int]] = {}
    resident: list[float] = [0.0]
    before_threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            for phase, n in (("hot", 1), ("hot2", 2), ("cold", 1), ("reread", 1)):
                torch.set_num_threads(n)
                loads = {"dense": (dense, lambda: load_model(dense, model)),
                         "compressed": (comp, lambda n=n: load_compressed(comp, model, threads=n))}
                for _, fn in loads.values():  # warm-up (threads started, allocator primed)
                    fn()
                for _ in range(repeats):
                    for kind, (path, fn) in loads.items():
                        if phase == "cold":
                            evict(path)
                            resident.append(resident_fraction(path))
                        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                        t0 = time.perf_counter()
                        fn()
                        times.setdefault(f"{kind} {phase}", []).append(time.perf_counter() - t0)
                        faults.setdefault(f"{kind} {phase}", []).append(
                            resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    finally:
        torch.set_num_threads(before_threads)
    return {"t": {k: statistics.median(v) for k, v in times.items()},
            "faults": {k: int(statistics.median(v)) for k, v in faults.items()}, "resident": max(resident)}


def bench_sizes(a, tmp: Path) -> None:
    print("ResNet-50 (1000 classes) file sizes, MB (ratio to dense safetensors)")
    print(f"{'sparsity':>8} {'dense st':>9} {'compressed':>16} {'+gzip':>16} {'ONNX dense':>16} {'ONNX sparse':>16}")
    for s in a.sparsities:
        torch.manual_seed(0)
        model = prune(models.build("resnet50", 1000), s)
        x = torch.randn(1, 3, 224, 224)
        files = {"dense": tmp / f"d{s}.st", "comp": tmp / f"c{s}.st", "gz": tmp / f"c{s}.st.gz",
                 "onnx": tmp / f"d{s}.onnx", "onnx_sp": tmp / f"s{s}.onnx"}
        save_model(files["dense"], model)
        save_compressed(files["comp"], model)
        save_compressed(files["gz"], model, gzip=True)
        export_onnx(model, x, files["onnx"])
        export_onnx(model, x, files["onnx_sp"], sparse_initializers=True)
        size = {k: p.stat().st_size for k, p in files.items()}
        d = size["dense"]
        cells = [f"{size[k] / 1e6:7.2f} ({d / size[k]:4.2f}x)" for k in ("comp", "gz", "onnx", "onnx_sp")]
        print(f"{s:8.0%} {d / 1e6:9.2f} " + " ".join(f"{c:>16}" for c in cells), flush=True)
        if abs(s - 0.9) < 1e-9:
            target = models.build("resnet50", 1000)
            r = time_loads(target, files["dense"], files["comp"], a.repeats)
            t, pf = r["t"], r["faults"]

            def line(phase: str, t: dict = t, pf: dict = pf) -> str:
                d, c = f"dense {phase}", f"compressed {phase}"
                return (f"dense {1e3 * t[d]:.1f} ms ({pf[d]} minor page faults), compressed {1e3 * t[c]:.1f} ms "
                        f"({pf[c]}) -> {t[c] / t[d]:.2f}x")

            print("    load at 90% into a built ResNet-50, dense safetensors (acdc.train.checkpoint.load_model: "
                  "safe_open + get_tensor per key, load_state_dict) vs compressed (acdc.load_compressed: read, "
                  "check every tensor, decode into the model's tensors, return the masks), 1 thread unless "
                  "marked, interleaved:", flush=True)
            ok = "confirmed" if r["resident"] == 0.0 else f"NOT confirmed: up to {r['resident']:.0%} still resident"
            print(f"      hot    (files in the page cache as written): {line('hot')} (target <= 1.5x)\n"
                  f"      cold   (file evicted by posix_fadvise DONTNEED before each load, eviction {ok} by mincore): "
                  f"{line('cold')}\n"
                  f"      reread (hot again, page cache filled by the cold reads): {line('reread')}", flush=True)
            print("      hot, threads=2 for both loaders (torch.set_num_threads(2); load_compressed(threads=2) "
                  "decodes row ranges in a 2-thread pool; the dense loader has no pool, only torch's intra-op "
                  "threads inside its copies; files still as written, measured right after the 1-thread hot pass): "
                  f"{line('hot2')} (target <= 1.5x, at 2 threads)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="linear,lm,resnet,sizes")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--sparsities", default="0.8,0.9,0.95,0.98")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and ORT (default 1)")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--depth", type=int, default=4, help="Linear layers in the 4096x4096 stack")
    p.add_argument("--vocab", type=int, default=10000)
    a = p.parse_args()
    a.sparsities = [float(s) for s in a.sparsities.split(",")]
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, threads {a.threads}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs, repeats {a.repeats}")
    with tempfile.TemporaryDirectory() as d:
        for part in a.only.split(","):
            {"linear": bench_linear, "lm": bench_lm, "resnet": bench_resnet, "sizes": bench_sizes}[part](a, Path(d))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
