"""JIT build of the lowbit CUDA extension (torch.utils.cpp_extension.load + ninja).

Cache folder: $TORCH_EXTENSIONS_DIR if set, else <repo>/.torch_extensions; one
sub-folder per (target arch, torch version) so a compile-only CI build and a
GPU build never overwrite each other.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import threading

_HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(_HERE)
CSRC = os.path.join(_HERE, "csrc")
SOURCES = [os.path.join(CSRC, n) for n in ("ops.cpp", "w4a16_kernel.cu", "w4a16_wgmma.cu", "w4a16_wgmma_ws.cu",
                                                    "attention_kernel.cu", "norm_kernel.cu")]
EXT_NAME = "lowbit_w4a16"

_lock = threading.Lock()
_module = None


def nvcc_available() -> bool:
    return find_cuda_home() is not None


def find_cuda_home() -> str | None:
    """The toolkit folder that nvcc really lives in.

    $CUDA_HOME / $CUDA_PATH win when set.  Otherwise ask the nvcc on PATH: it
    may be a wrapper script (here /usr/local/bin/nvcc execs
    /usr/local/cuda-13.0/bin/nvcc), so dirname(which nvcc) is wrong; nvcc's
    own dry run prints the real folder as `_HERE_`.  Last, torch's guess and
    /usr/local/cuda.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            out = subprocess.run([nvcc, "-dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull], capture_output=True, text=True, timeout=60)
            m = re.search(r"_HERE_=(\S+)", out.stdout + out.stderr)
            if m:
                home = os.path.dirname(os.path.realpath(m.group(1)))
                if os.path.exists(os.path.join(home, "bin", "nvcc")):
                    return home
        except (OSError, subprocess.SubprocessError):
            pass
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    for home in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    return None


def find_cuobjdump() -> tuple[str, dict] | None:
    """cuobjdump and the environment to run it in (it calls nvdisasm): the toolkit's, the one on PATH, or the pip
    wheels nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm (requirements-dev.txt; CI's toolkit has nvcc alone)."""
    import importlib.util

    home = find_cuda_home()
    tool = os.path.join(home, "bin", "cuobjdump") if home else ""
    if os.path.isfile(tool) or (tool := shutil.which("cuobjdump")):
        return tool, dict(os.environ)
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        for bin_dir in sorted(glob.glob(os.path.join(root, "cu*", "bin"))):
            tool = os.path.join(bin_dir, "cuobjdump")
            if os.path.isfile(tool) and os.path.isfile(os.path.join(bin_dir, "nvdisasm")):
                return tool, dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    return None


def _target_arch() -> str:
    """Compute capability to build for: the GPU present, else $TORCH_CUDA_ARCH_LIST, else 9.0; 9.0 is built as
    9.0a (sm_90a: Hopper's wgmma, which the path-5 and path-6 kernels need; such code runs on compute capability 9.0
    only)."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            raise RuntimeError(
                f"unsupported GPU {torch.cuda.get_device_name()} with compute capability {major}.{minor}: "
                "lowbit w4a16_gemm needs >= 8.0 (bf16 mma.sync, cp.async)"
            )
        arch = f"{major}.{minor}"
    else:
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")
    return "9.0a" if arch == "9.0" else arch


def build_dir(arch: str) -> str:
    import torch

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(REPO, ".torch_extensions")
    tag = re.sub(r"[^0-9A-Za-z]+", "_", f"{arch}_torch{torch.__version__}")
    return os.path.join(root, f"{EXT_NAME}_{tag}")


def load_extension(verbose: bool = False):
    """Compile (first time, minutes) or load (cached) the extension; returns the module.

    Loading registers the CUDA kernel of torch.ops.lowbit.w4a16_gemm.
    """
    global _module
    with _lock:
        if _module is not None:
            return _module
        cuda_home = find_cuda_home()
        if cuda_home is None:
            raise RuntimeError("lowbit: cannot build the CUDA extension: no nvcc found (set CUDA_HOME)")
        # torch.utils.cpp_extension reads CUDA_HOME at import; set both the
        # variable and the module attribute in case it was imported already.
        os.environ["CUDA_HOME"] = cuda_home
        import torch.utils.cpp_extension as cpp

        cpp.CUDA_HOME = cuda_home
        arch = _target_arch()
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        bdir = build_dir(arch)
        os.makedirs(bdir, exist_ok=True)
        # Only c10/cuda headers are included (no ATen/cuda/CUDAContext.h), so
        # the toolkit's own include folder suffices; the pip nvidia/*/include
        # folders (cusparse.h etc.) are not needed and are kept off the path
        # so their headers cannot shadow the toolkit's.
        _module = cpp.load(
            name=EXT_NAME,
            sources=SOURCES,
            build_directory=bdir,
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr", "-lineinfo",
                               "-Xptxas=-warn-spills"],
            extra_include_paths=[CSRC],
            verbose=verbose,
        )
        return _module


if __name__ == "__main__":
    t = __import__("time").time()
    load_extension(verbose="-v" in sys.argv)
    print(f"lowbit extension ready in {__import__('time').time() - t:.1f}s")
