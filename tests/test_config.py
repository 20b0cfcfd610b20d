"""Config loading: YAML + dotted overrides, validation messages, help text, frozen sections."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alignslm.config import Config, ConfigError, help_text, load_config, replace, to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_paper_settings():
    cfg = load_config()
    assert cfg.sample.n_continuations == 5 and cfg.sample.temperature == 0.8 and cfg.sample.top_k == 25
    assert (cfg.train.lora_r, cfg.train.lora_alpha, cfg.train.loss) == (32, 8, "sigmoid")
    assert cfg.curriculum.thresholds[:2] == ((3.0, 1.0), (4.0, 2.0))
    assert cfg.pairs.autobleu_delta == 0.1


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sample:\n  top_k: 10\n  temperature: 1\ntrain:\n  target_modules: [q_proj]\n")
    cfg = load_config(p, ["sample.top_p=0.9", "run.run_dir=/x/y", "curriculum.rounds=3"])
    assert cfg.sample.top_k == 10
    assert cfg.sample.temperature == 1.0 and isinstance(cfg.sample.temperature, float)
    assert cfg.sample.top_p == 0.9 and cfg.run.run_dir == "/x/y" and cfg.curriculum.rounds == 3
    assert cfg.train.target_modules == ("q_proj",)


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["sample.topk=3"])
    msg = str(e.value)
    assert "sample.topk" in msg and "top_k" in msg and "temperature" in msg
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        load_config(None, ["bogus.x=1"])


@pytest.mark.parametrize("override,fragment", [
    ("sample.top_k=abc", "sample.top_k': expected an integer"),
    ("sample.top_k=1.5", "expected an integer"),
    ("run.smoke=3", "expected true/false"),
    ("sample.temperature=hot", "expected a number"),
    ("train.target_modules=5", "expected a list"),
    ("sample=3", "expected a mapping"),
])
def test_wrong_types(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 (PyYAML) reads ``1e-6`` as a string; a float key takes it as the number (paper lr 1e-6)."""
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-6\n  beta: 5E-2\n")
    cfg = load_config(tmp_path / "c.yaml", ["sample.temperature=8e-1"])
    assert (cfg.train.lr, cfg.train.beta, cfg.sample.temperature) == (1e-6, 0.05, 0.8)
    for bad in ("train.lr=1e-", "train.lr=e-6", "train.lr=nan"):
        with pytest.raises(ConfigError, match="expected a number"):
            load_config(None, [bad])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(None, ["sample.top_k=1e3"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sample: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["sample.top_k"])


def test_frozen_and_replace():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sample.top_k = 3  # type: ignore[misc]
    cfg2 = replace(cfg, **{"pairs.chosen_min": 4.0})
    assert cfg2.pairs.chosen_min == 4.0 and cfg.pairs.chosen_min == 3.0


def test_smoke_sizes_apply_under_user_values():
    cfg = load_config(None, ["run.smoke=true", "sample.n_prompts=5"])
    assert cfg.unitlm.steps == 60 and cfg.sample.n_prompts == 5


def test_roundtrip_through_yaml(tmp_path):
    import yaml

    cfg = load_config(None, ["sample.top_k=7"])
    p = tmp_path / "resolved.yaml"
    p.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(p) == cfg


def test_cli_help_lists_stages_and_options():
    out = subprocess.run([sys.executable, "-m", "alignslm.run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("tokenize", "vocode", "transcribe", "judge", "pairs", "train", "evaluate", "sample.top_k"):
        assert word in out.stdout


def test_help_text_has_no_lab_notes_and_names_only_files_in_the_repo():
    """--help says what an option does and why; numbers live in bench/RESULTS.md or experiments/ (named
    there), not machine load, tracker ids or documents outside the repository."""
    text = help_text()
    for bad in (r"\bissue \d", r"\bload (average|~|\d)", r"\bVM\b", r"this machine", r"\bcommit [0-9a-f]{7}"):
        assert not re.search(bad, text, re.IGNORECASE), (bad, re.search(f".*{bad}.*", text, re.IGNORECASE)[0])
    named = set(re.findall(r"\b((?:bench|experiments|docs|configs|tests)/[\w./-]+\.(?:md|py|sh|yaml))", text))
    assert named, "the help text points to no results file"
    assert [f for f in sorted(named) if not (ROOT / f).is_file()] == []


def test_cli_bad_key_fails_fast_before_models_load():
    # "fast" as a property, not a wall-clock budget: the error comes before torch or transformers is imported
    code = ("import runpy, sys\nsys.argv = ['alignslm.run', 'sample.tpo_k=3']\ntry:\n"
            "    runpy.run_module('alignslm.run', run_name='__main__')\nexcept SystemExit as e:\n"
            "    print('exit', e.code, 'torch' in sys.modules, 'transformers' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["exit", "2", "False", "False"] and "sample.tpo_k" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "alignslm.run", "unitlm.path=/does/not/exist"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "/does/not/exist" in out.stderr and "unitlm.path" in out.stderr
    env = {**os.environ, "ALIGNSLM_IMPL": "cuda"}  # no op has it: an error before any stage, naming the choices
    out = subprocess.run([sys.executable, "-m", "alignslm.run", "--dry-run"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "ALIGNSLM_IMPL='cuda' is not valid" in out.stderr and "triton" in out.stderr


def test_choices_are_literal_fields_validated_once_and_listed_by_help():
    """Every option with a fixed set of values is a Literal field: a value outside it fails at load time naming
    the key and the choices, --help lists them, each default is one of them, and the components that keep their
    own tuple (or {kind: builder} dict) of the same choices agree with the config."""
    import typing

    from alignslm import config as C
    from alignslm.dpo.losses import LOSSES
    from alignslm.eval.salmon import SCORE_MODES as SALMON_SCORES
    from alignslm.eval.scoring import SCORE_MODES
    from alignslm.judge import BACKENDS, JUDGE_DTYPES
    from alignslm.judge.signal import KINDS
    from alignslm.lm.unitlm import SUPPORTS
    from alignslm.speech.encoders import ENCODERS
    from alignslm.vocoder import KINDS as VOCODERS

    for alias, tup in ((C.JudgeBackend, BACKENDS), (C.VocoderKind, VOCODERS),
                       (C.Loss, LOSSES), (C.SalmonScore, SALMON_SCORES), (C.ScoreMode, SCORE_MODES),
                       (C.JudgeDtype, JUDGE_DTYPES), (C.Signal, KINDS), (C.Support, SUPPORTS), (C.Encoder, ENCODERS)):
        assert set(typing.get_args(alias)) == set(tup), (alias, tup)
    n = 0
    for sec in dataclasses.fields(Config):
        hints = typing.get_type_hints(sec.default_factory)
        for f in dataclasses.fields(sec.default_factory()):
            ch = C.choices(hints[f.name])
            if ch:
                n += 1
                assert f.default in ch, f"{sec.name}.{f.name}"
                assert f"{sec.name}.{f.name} = " in help_text() and f"[choices: {' | '.join(ch)}]" in help_text()
    assert n >= 20
    with pytest.raises(ConfigError, match=r"'judge.mode': 'vibes' is not a choice; choose one of score \| perplexity"):
        load_config(overrides=["judge.mode=vibes"])

