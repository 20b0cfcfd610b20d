"""Untrusted files: every torch checkpoint the package reads is loaded with weights_only=True."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_torch_load_is_weights_only():
    calls = []
    for f in sorted([*ROOT.joinpath("alignslm").rglob("*.py"), *ROOT.joinpath("kernels").rglob("*.py")]):
        text = f.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            calls.append((f.relative_to(ROOT), m.group(1)))
    assert calls, "expected the package to load checkpoints somewhere"
    bad = [(str(f), args) for f, args in calls if "weights_only=True" not in args]
    assert bad == [], f"torch.load without weights_only=True: {bad}"


def test_checkpoint_with_code_is_refused(tmp_path):
    """weights_only=True refuses a pickle that would run code (the guarantee the scan above relies on)."""
    import pickle

    import pytest
    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    p = tmp_path / "ckpt.pt"
    with open(p, "wb") as f:
        pickle.dump({"generator": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(p, weights_only=True)
    assert not marker.exists()
