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
    from checkpoint import smollm2_gguf_path
    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def wikitext():
    if not WIKITEXT.exists():
        pytest.skip(f"{WIKITEXT} not found")
    return WIKITEXT.read_text(encoding="utf-8")
