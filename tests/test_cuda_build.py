"""pyserve._cuda: the CUDA sources compile (when nvcc is found) and the kernels are exact (GPU).

The build test configures a throw-away CMake project made of the root CMakeLists.txt's CUDA
section (between `# BEGIN CUDA SECTION` and `# END CUDA SECTION`), so it checks exactly what the
package build compiles, without building the C++ core. It builds for sm_90 only, to stay fast.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
)
EXPECTED_API = {
    "KvSwapper",
    "StreamFence",
    "stream_wait_stream",
    "device_count",
    "runtime_version",
    "driver_version",
    "MAX_PAIRS_PER_LAUNCH",
}


def _cuda_section() -> str:
    text = (ROOT / "CMakeLists.txt").read_text()
    start, end = text.index("# BEGIN CUDA SECTION"), text.index("# END CUDA SECTION")
    return text[start:end].replace("${CMAKE_CURRENT_SOURCE_DIR}", ROOT.as_posix())


def _write_project(src: Path) -> None:
    """A minimal project: the same header options as the root file, then its CUDA section."""
    src.mkdir()
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\n"
        "project(pyserve_cuda_check LANGUAGES CXX)\n"
        "set(CMAKE_CXX_STANDARD 17)\nset(CMAKE_POSITION_INDEPENDENT_CODE ON)\n"
        'set(PYSERVE_CUDA "ON")\nset(PYSERVE_PYTHON ON)\n'
        "set(PYSERVE_WARNINGS -Wall -Wextra -Wpedantic -Wno-unused-parameter)\n"
        "find_package(Python REQUIRED COMPONENTS Interpreter Development.Module)\n"
        "find_package(pybind11 CONFIG REQUIRED)\n" + _cuda_section()
    )


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")
def test_cuda_module_compiles(tmp_path: Path) -> None:
    """Configure + build the _cuda target (sm_90) and import-check the symbols it defines."""
    pybind11 = pytest.importorskip("pybind11")
    _write_project(tmp_path / "src")
    build = tmp_path / "build"
    env = dict(os.environ, CUDACXX=NVCC)
    configure = [
        "cmake", "-S", str(tmp_path / "src"), "-B", str(build),
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DPython_EXECUTABLE={sys.executable}",
        "-DCMAKE_CUDA_ARCHITECTURES=90", "-DCMAKE_BUILD_TYPE=Release",
    ]  # fmt: skip
    subprocess.run(configure, check=True, env=env, capture_output=True, text=True)
    result = subprocess.run(
        ["cmake", "--build", str(build), "--target", "_cuda", "-j2"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    modules = list(build.glob("_cuda*.so"))
    assert len(modules) == 1, f"expected one built module, found {modules}"
    # Import it (no GPU or driver needed for this) and check its API and argument validation.
    probe = (
        "import _cuda, json\n"
        "try:\n    _cuda.KvSwapper([256], [], 24, 1, 0, 0)\n    err = None\n"
        "except ValueError as e:\n    err = str(e)\n"
        "print(json.dumps({'names': dir(_cuda), 'max': _cuda.MAX_PAIRS_PER_LAUNCH,\n"
        "                  'devices': _cuda.device_count(), 'err': err}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=build, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert EXPECTED_API <= set(info["names"])
    assert info["max"] >= 2048 and info["devices"] >= 0
    assert info["err"] is not None and "multiple of 16" in info["err"]
    # sm_90 machine code is embedded (no PTX-only build).
    if shutil.which("cuobjdump"):
        listing = subprocess.run(
            ["cuobjdump", "--list-elf", str(modules[0])], capture_output=True, text=True
        )
        assert "sm_90" in listing.stdout, listing.stdout + listing.stderr


def _cuda_module():
    try:
        return importlib.import_module("pyserve._cuda")
    except ImportError:
        return None


@pytest.mark.skipif(_cuda_module() is None, reason="pyserve._cuda not built")
def test_installed_module_exposes_api() -> None:
    mod = _cuda_module()
    assert EXPECTED_API <= set(dir(mod))
    assert mod.MAX_PAIRS_PER_LAUNCH >= 2048  # one launch covers a 32K-token request at block 16
    assert mod.device_count() >= 0


GPU = pytest.mark.skipif(
    not torch.cuda.is_available() or _cuda_module() is None, reason="needs CUDA and pyserve._cuda"
)


def _caches(layers: int, gpu_blocks: int, cpu_blocks: int, dtype=torch.bfloat16):
    shape = (2, 16, 4, 64)  # [2, block_size, H_kv, D]
    gen = torch.Generator(device="cuda").manual_seed(0)
    gpu = [torch.randn((gpu_blocks, *shape), generator=gen, device="cuda").to(dtype) for _ in range(layers)]  # fmt: skip
    cpu = [torch.randn((cpu_blocks, *shape)).to(dtype).pin_memory() for _ in range(layers)]
    return gpu, cpu


def _pairs(rng: np.random.Generator, n: int, src_blocks: int, dst_blocks: int) -> np.ndarray:
    src = rng.choice(src_blocks, size=n, replace=False)
    dst = rng.choice(dst_blocks, size=n, replace=False)
    return np.stack([src, dst], axis=1).astype(np.int32)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("n", [1, 37, 300])
def test_swap_round_trip_is_exact(n: int) -> None:
    """GPU -> CPU -> GPU through the kernel equals torch indexing, bit for bit."""
    mod = _cuda_module()
    rng = np.random.default_rng(n)
    gpu, cpu = _caches(layers=3, gpu_blocks=512, cpu_blocks=400)
    block_bytes = gpu[0][0].numel() * gpu[0].element_size()
    sw = mod.KvSwapper([t.data_ptr() for t in gpu], [t.data_ptr() for t in cpu], block_bytes,
                       gpu[0].shape[0], cpu[0].shape[0], torch.cuda.current_device())  # fmt: skip
    stream = torch.cuda.current_stream().cuda_stream
    out = _pairs(rng, n, 512, 400)
    expected_cpu = [c.clone() for c in cpu]
    for e, g in zip(expected_cpu, gpu, strict=True):
        e[torch.from_numpy(out[:, 1]).long()] = g[torch.from_numpy(out[:, 0]).long()].cpu()
    sw.swap_out(out, stream)
    torch.cuda.synchronize()
    for e, c in zip(expected_cpu, cpu, strict=True):
        assert torch.equal(e, c)
    back = np.ascontiguousarray(_pairs(rng, n, 400, 512))
    back[:, 0] = out[:, 1]  # bring the swapped-out blocks back to fresh GPU blocks
    expected_gpu = [g.clone() for g in gpu]
    for e, c in zip(expected_gpu, cpu, strict=True):
        e[torch.from_numpy(back[:, 1]).long().cuda()] = c[
            torch.from_numpy(back[:, 0]).long()
        ].cuda()
    poison = torch.from_numpy(back[:, 1]).long().cuda()
    for g in gpu:
        g[poison] = torch.nan
    sw.swap_in(back, stream)
    torch.cuda.synchronize()
    for e, g in zip(expected_gpu, gpu, strict=True):
        assert torch.equal(e, g)


@pytest.mark.gpu
@GPU
def test_block_copy_matches_torch_and_per_block_loop() -> None:
    mod = _cuda_module()
    rng = np.random.default_rng(7)
    gpu, cpu = _caches(layers=4, gpu_blocks=256, cpu_blocks=128, dtype=torch.float16)
    block_bytes = gpu[0][0].numel() * gpu[0].element_size()
    sw = mod.KvSwapper([t.data_ptr() for t in gpu], [t.data_ptr() for t in cpu], block_bytes,
                       256, 128, torch.cuda.current_device())  # fmt: skip
    perm = rng.permutation(256)
    pairs = np.stack([perm[:60], perm[60:120]], axis=1).astype(np.int32)
    expected = [g.clone() for g in gpu]
    src, dst = (
        torch.from_numpy(pairs[:, 0]).long().cuda(),
        torch.from_numpy(pairs[:, 1]).long().cuda(),
    )
    for e in expected:
        e[dst] = e[src]
    sw.copy(pairs, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    for e, g in zip(expected, gpu, strict=True):
        assert torch.equal(e, g)
    # The per-block cudaMemcpyAsync baseline moves the same bytes as the kernel.
    out = _pairs(rng, 50, 256, 128)
    sw.swap_out_per_block(out, 0)
    torch.cuda.synchronize()
    for g, c in zip(gpu, cpu, strict=True):
        assert torch.equal(
            c[torch.from_numpy(out[:, 1]).long()],
            g[torch.from_numpy(out[:, 0]).long().cuda()].cpu(),
        )


@pytest.mark.gpu
@GPU
def test_swapper_rejects_bad_input() -> None:
    mod = _cuda_module()
    gpu, cpu = _caches(layers=1, gpu_blocks=8, cpu_blocks=8)
    pageable = torch.zeros_like(cpu[0])
    block_bytes = gpu[0][0].numel() * gpu[0].element_size()
    dev = torch.cuda.current_device()
    with pytest.raises(ValueError, match="pinned"):
        mod.KvSwapper([gpu[0].data_ptr()], [pageable.data_ptr()], block_bytes, 8, 8, dev)
    sw = mod.KvSwapper([gpu[0].data_ptr()], [cpu[0].data_ptr()], block_bytes, 8, 8, dev)
    with pytest.raises(ValueError, match="out of range"):
        sw.swap_out(np.array([[0, 8]], dtype=np.int32), 0)
    with pytest.raises(ValueError, match="int32"):
        sw.swap_in(np.array([[0, 1]], dtype=np.int64), 0)
    with pytest.raises(ValueError, match="distinct"):
        sw.copy(np.array([[0, 1], [2, 1]], dtype=np.int32), 0)


# ---- pyserve.kv.cuda_swap: the Python wrapper ---------------------------------------------------


def _layer_caches(device: str, blocks: int, layers: int = 3, pin: bool = False):
    gen = torch.Generator().manual_seed(blocks)
    caches = [torch.randn(blocks, 2, 4, 2, 8, generator=gen) for _ in range(layers)]
    return [c.to(device) if not pin else c.pin_memory() for c in caches]


def _expected_after(gpu, cpu, out, inn, cow):
    """Apply the moves one pair at a time on copies (the definition in docs/interfaces.md)."""
    gpu, cpu = [g.clone() for g in gpu], [c.clone() for c in cpu]
    for g, c in zip(gpu, cpu, strict=True):
        for s, d in out:
            c[d] = g[s].cpu()
        for s, d in inn:
            g[d] = c[s].to(g.device)
        for s, d in cow:
            g[d] = g[s]
    return gpu, cpu


def _random_moves(rng: np.random.Generator, ng: int, nc: int):
    perm_g, perm_c = rng.permutation(ng), rng.permutation(nc)
    out = np.stack([perm_g[:5], perm_c[:5]], axis=1).astype(np.int32)
    inn = np.stack([perm_c[5:9], perm_g[5:9]], axis=1).astype(np.int32)
    cow = np.stack([perm_g[9:12], perm_g[12:15]], axis=1).astype(np.int32)
    return out, inn, cow


def test_swapper_torch_path_matches_definition() -> None:
    from pyserve.kv.cuda_swap import CudaSwapper

    gpu, cpu = _layer_caches("cpu", 32), _layer_caches("cpu", 16)
    sw = CudaSwapper(gpu, cpu)
    assert not sw.uses_kernels  # CPU tensors: torch fallback
    out, inn, cow = _random_moves(np.random.default_rng(3), 32, 16)
    want_gpu, want_cpu = _expected_after(gpu, cpu, out, inn, cow)
    sw.apply(swap_out=out, swap_in=inn, copy=cow)
    sw.synchronize()
    for a, b in zip(want_gpu + want_cpu, gpu + cpu, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"swap_out": np.array([[0, 16]], np.int32)}, "out of range"),
        ({"swap_in": np.array([[-1, 0]], np.int32)}, "out of range"),
        ({"copy": np.array([[0, 1], [2, 1]], np.int32)}, "distinct"),
        ({"copy": np.array([[0, 1], [1, 2]], np.int32)}, "both a source and a destination"),
        ({"swap_out": np.array([0, 1, 2], np.int32)}, r"shape \[n, 2\]"),
        ({"swap_out": np.array([[0.0, 1.0]])}, "integers"),
    ],
)
def test_swapper_rejects_bad_pairs(kwargs, match) -> None:
    from pyserve.kv.cuda_swap import CudaSwapper

    sw = CudaSwapper(_layer_caches("cpu", 32), _layer_caches("cpu", 16))
    with pytest.raises(ValueError, match=match):
        sw.apply(**kwargs)


def test_swapper_rejects_mismatched_caches() -> None:
    from pyserve.kv.cuda_swap import CudaSwapper

    gpu = _layer_caches("cpu", 32)
    with pytest.raises(ValueError, match="layers"):
        CudaSwapper(gpu, _layer_caches("cpu", 16, layers=2))
    with pytest.raises(ValueError, match="shape and dtype"):
        CudaSwapper(gpu, [c.half() for c in _layer_caches("cpu", 16)])
    with pytest.raises(ValueError, match="none"):
        CudaSwapper([], [])


@pytest.mark.gpu
@GPU
def test_swapper_kernel_path_matches_definition_and_orders_streams() -> None:
    from pyserve.kv.cuda_swap import CudaSwapper

    gpu, cpu = _layer_caches("cuda", 64), _layer_caches("cpu", 32, pin=True)
    sw = CudaSwapper(gpu, cpu)
    assert sw.uses_kernels
    rng = np.random.default_rng(5)
    for _ in range(3):
        out, inn, cow = _random_moves(rng, 64, 32)
        src = torch.from_numpy(out[:, 0]).long().cuda()
        fresh = [torch.randn_like(g[src]) for g in gpu]
        staged = [g.clone() for g in gpu]
        for g, f in zip(staged, fresh, strict=True):
            g[src] = f
        want_gpu, want_cpu = _expected_after(staged, cpu, out, inn, cow)
        # Compute-stream writes queued (late, after a sleep) before the swap must be swapped
        # out; a swap stream that does not wait for the compute stream would copy stale blocks.
        torch.cuda._sleep(50_000_000)
        for g, f in zip(gpu, fresh, strict=True):
            g[src] = f
        with torch.cuda.stream(sw.stream):
            torch.cuda._sleep(50_000_000)  # a compute stream that does not wait reads too early
        sw.apply(swap_out=out, swap_in=inn, copy=cow)
        sums = [g.double().sum() for g in gpu]
        sw.synchronize()
        torch.cuda.synchronize()
        for a, b in zip(want_gpu + want_cpu, gpu + cpu, strict=True):
            assert torch.equal(a, b)
        for total, w in zip(sums, want_gpu, strict=True):
            assert total.item() == w.double().sum().item()


@pytest.mark.gpu
@GPU
def test_swap_ops_hook_on_kv_cache() -> None:
    from pyserve.kv.cache import KVCache
    from pyserve.kv.cuda_swap import CudaSwapOps

    cache = KVCache(2, 2, 64, 16, 64, 32, torch.bfloat16, "cuda")
    cache.device_pool.normal_()
    before = cache.device_pool.clone()
    cache.set_swap_ops(CudaSwapOps(cache))
    cache.swap_out(np.array([[3, 7], [9, 0]], np.int32))
    cache.swap_in(np.array([[7, 20], [0, 21]], np.int32))
    torch.cuda.synchronize()
    assert torch.equal(cache.device_pool[:, [20, 21]], before[:, [3, 9]])
    assert torch.equal(cache.cpu_pool[:, [7, 0]], before[:, [3, 9]].cpu())
