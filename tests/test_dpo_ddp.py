"""DDP over the LoRA parameters: 2 CPU processes (torchrun, gloo) follow the same loss trajectory as 1
process with the same global batch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import synthetic_pairs, tiny_lm, train_cfg

from alignslm.dpo.trainer import DPOTrainer, prepare_pairs

TESTS = Path(__file__).resolve().parent
GLOBAL_BATCH, STEPS_PER_EPOCH, EPOCHS = 8, 2, 2

WORKER = r"""
import json, os, sys, dataclasses
import torch, torch.distributed as dist
torch.set_num_threads(1)
sys.path.insert(0, os.environ["TESTS_DIR"])
from helpers import synthetic_pairs, tiny_lm, train_cfg
from alignslm.dpo.trainer import DPOTrainer, prepare_pairs
dist.init_process_group("gloo")
world = dist.get_world_size()
cfg = dataclasses.replace(train_cfg(epochs=%(epochs)d, batch_size=%(gb)d, grad_accum=1, warmup_steps=1,
                          checkpoint_every=1000))
lm = tiny_lm(seed=4)
ex, _ = prepare_pairs(synthetic_pairs(%(n)d, seed=6), lm, 64)
tr = DPOTrainer(lm, cfg, sys.argv[1], seed=9)
tr.train(ex)
ev = tr.evaluate(ex)
if dist.get_rank() == 0:
    json.dump(ev, open(os.path.join(sys.argv[1], "eval.json"), "w"))
dist.destroy_process_group()
"""


def _log(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.integration
def test_two_processes_match_one_process(tmp_path):
    n = GLOBAL_BATCH * STEPS_PER_EPOCH
    script = tmp_path / "worker.py"
    script.write_text(WORKER % {"epochs": EPOCHS, "gb": GLOBAL_BATCH, "n": n})
    env = {**os.environ, "TESTS_DIR": str(TESTS), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "0", "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", str(script),
                        str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]

    torch.set_num_threads(1)
    cfg = dataclasses.replace(train_cfg(epochs=EPOCHS, batch_size=GLOBAL_BATCH, grad_accum=1, warmup_steps=1,
                                        checkpoint_every=1000))
    lm = tiny_lm(seed=4)
    ex, _ = prepare_pairs(synthetic_pairs(n, seed=6), lm, 64)
    single = DPOTrainer(lm, cfg, tmp_path / "one", seed=9)
    single.train(ex)
    one, two = _log(tmp_path / "one"), _log(tmp_path / "ddp")
    assert len(one) == len(two) == STEPS_PER_EPOCH * EPOCHS
    for a, b in zip(one, two):
        for k in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (a["step"], k, a[k], b[k])
    assert abs(one[-1]["loss"] - one[0]["loss"]) > 1e-3  # the trajectory is not flat
    ev = json.loads((tmp_path / "ddp" / "eval.json").read_text())
    assert ev["rewards/margins"] == pytest.approx(single.evaluate(ex)["rewards/margins"], rel=1e-4, abs=1e-5)
