"""The one way in to CTranslate2 (the Whisper encoder of the demo tokenizer and the ASR).

CTranslate2 picks its CPU GEMM backend when the library loads: Intel MKL on Intel CPUs, oneDNN elsewhere
(``CT2_USE_MKL`` overrides). MKL's float32 GEMM gives different bits for different thread counts (measured
with Whisper tiny.en: another hash at 1 vs 2 intra-op threads), oneDNN's does not (same hash at 1, 2, 3, 4,
8 threads, float32 and int8), so the run's units and transcripts would depend on the machine's cores and
on the world size (``torchrun`` gives each rank fewer threads). alignslm therefore asks for oneDNN
(``CT2_USE_MKL=0``) unless the user has set ``CT2_USE_MKL`` — which must happen before anything imports
ctranslate2 or faster_whisper, so every import of either goes through :func:`ctranslate2_module`.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import ModuleType

BACKEND_ENV = "CT2_USE_MKL"


def ctranslate2_module() -> ModuleType:
    """Import ctranslate2 with the reproducible CPU backend (see the module docstring)."""
    if "ctranslate2" not in sys.modules:
        os.environ.setdefault(BACKEND_ENV, "0")
    elif os.environ.get(BACKEND_ENV) != "0":  # once per call site: the warnings registry, no state of ours
        warnings.warn(f"ctranslate2 was imported before alignslm could set {BACKEND_ENV}=0: on an Intel CPU its MKL "
                      f"backend makes units and transcripts depend on the thread count. Set {BACKEND_ENV}=0 in the "
                      "environment.", RuntimeWarning, stacklevel=2)
    import ctranslate2

    return ctranslate2
