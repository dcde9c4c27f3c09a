import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# $WIKITEXT overrides it (the GPU machine gets the corpus carried into the repo: ../shared does not travel)
WIKITEXT = Path(os.environ.get("WIKITEXT", ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"))


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The SmolLM2 GGUF, never downloaded by a test: `python checkpoint.py` (README's test command) fetches it."""
    from checkpoint import CHECKPOINTS, SMOLLM2_MEMBER
    path = CHECKPOINTS / SMOLLM2_MEMBER
    if not path.exists():
        pytest.skip(f"{path} not found: fetch it with `python checkpoint.py`")
    return path


@pytest.fixture(scope="session")
def wikitext():
    if not WIKITEXT.exists():
        pytest.skip(f"{WIKITEXT} not found")
    return WIKITEXT.read_text(encoding="utf-8")
