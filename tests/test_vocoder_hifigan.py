"""Unit HiFi-GAN: public checkpoint format, strict loading, batched == one-at-a-time, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY_HIFIGAN, save_hifigan, weight_normed_generator

from alignslm.vocoder import load_vocoder
from alignslm.vocoder.hifigan import (
    BatchConditioning,
    CheckpointError,
    ConditioningError,
    HifiganVocoder,
    VocoderInputError,
    load_codegenerator,
)

# The names a public unit HiFi-GAN checkpoint of this shape holds (speech-resynthesis / textlesslib).
PUBLIC_KEYS = {
    "dict.weight", "dur_predictor.conv1.0.weight", "dur_predictor.conv1.0.bias", "dur_predictor.ln1.weight",
    "dur_predictor.ln1.bias", "dur_predictor.conv2.0.weight", "dur_predictor.conv2.0.bias",
    "dur_predictor.ln2.weight", "dur_predictor.ln2.bias", "dur_predictor.proj.weight", "dur_predictor.proj.bias",
    "conv_pre.weight_g", "conv_pre.weight_v", "conv_pre.bias", "conv_post.weight_g", "conv_post.weight_v",
    "conv_post.bias",
    *(f"ups.{i}.{p}" for i in range(2) for p in ("weight_g", "weight_v", "bias")),
    *(f"resblocks.{r}.convs{c}.{j}.{p}" for r in range(4) for c in (1, 2) for j in range(3)
      for p in ("weight_g", "weight_v", "bias")),
}


def _rand_units(n: int, lo: int = 1, hi: int = 30, seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 20, size=int(rng.integers(lo, hi))).tolist() for _ in range(n)]


@pytest.mark.parametrize("new_api", [False, True])
def test_public_checkpoint_loads_strictly_and_matches_weight_normed_model(tmp_path, new_api):
    ref = weight_normed_generator(TINY_HIFIGAN, new_api=new_api)
    if not new_api:
        assert set(ref.state_dict()) == PUBLIC_KEYS
    d = save_hifigan(tmp_path, TINY_HIFIGAN, ref)
    model = load_codegenerator(d)
    assert not any("weight_g" in k or "parametrizations" in k for k in model.state_dict())
    code = torch.tensor([[3, 5, 5, 1, 19, 0, 7]])
    with torch.no_grad():
        want = ref(code, dur_prediction=True)  # weight norm computed on the fly
        got = model(code, dur_prediction=True)
    assert got.shape == want.shape and got.shape[-1] > 7 * 4  # durations > 1 frame were predicted
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_batched_duration_prediction_identical_to_one_at_a_time(tmp_path):
    model = load_codegenerator(save_hifigan(tmp_path, TINY_HIFIGAN, weight_normed_generator(TINY_HIFIGAN)))
    units = _rand_units(24, 1, 60)
    lengths = torch.tensor([len(u) for u in units])
    codes = torch.nn.utils.rnn.pad_sequence([torch.tensor(u) for u in units], batch_first=True)
    with torch.no_grad():
        batched = model.predict_durations(codes, lengths)
        for i, u in enumerate(units):
            single = model.predict_durations(torch.tensor([u]), torch.tensor([len(u)]))
            assert torch.equal(batched[i, : len(u)], single[0]), f"item {i}"
            assert (batched[i, len(u):] == 0).all()
    assert batched.max() > 1  # not a degenerate all-ones predictor


def test_batch_vocode_matches_single_and_trims(tmp_path, monkeypatch):
    monkeypatch.setattr("alignslm.vocoder.hifigan.CPU_MIN_FILL", 0.0)  # one padded batch of all 7 lengths
    voc = load_vocoder(save_hifigan(tmp_path, TINY_HIFIGAN, weight_normed_generator(TINY_HIFIGAN)))
    assert isinstance(voc, HifiganVocoder) and voc.sample_rate == 16000
    units = _rand_units(7, 1, 25, seed=3)
    batched = voc.vocode(units, batch_size=7)
    single = [voc.vocode([u], batch_size=1)[0] for u in units]
    for i, (b, s) in enumerate(zip(batched, single)):
        assert b.shape == s.shape, f"item {i}"
        np.testing.assert_allclose(b, s, atol=2e-5, err_msg=f"item {i}")
    # given durations: the output is exactly sum(durations) frames long
    durs = [[2] * len(u) for u in units]
    out = voc.vocode(units, durations=durs)
    assert [len(w) for w in out] == [2 * len(u) * 4 for u in units]


def test_multispeaker_f0_model_batches_like_single(tmp_path):
    cfg = {**TINY_HIFIGAN, "multispkr": True, "num_speakers": 4, "f0": True, "model_in_dim": 17}
    cfg.pop("dur_predictor_params")
    model = load_codegenerator(save_hifigan(tmp_path, cfg, weight_normed_generator(cfg)))
    assert "spkr.weight" in model.state_dict()
    rng = np.random.default_rng(0)
    units = [torch.tensor(u) for u in _rand_units(4, 2, 12)]
    f0s = [torch.tensor(rng.uniform(-1, 1, 2 * len(u)), dtype=torch.float32) for u in units]  # 2 F0 frames/unit
    cond = BatchConditioning(spkr=torch.tensor([2]))
    with torch.no_grad():
        codes = torch.nn.utils.rnn.pad_sequence(units, batch_first=True)
        x, frames = model.features(codes, torch.tensor([len(u) for u in units]), None,
                                   BatchConditioning(cond.spkr, None, f0s))
        batched = model.generate(x, frames)
        for i, u in enumerate(units):
            xs, fs = model.features(u[None], torch.tensor([len(u)]), None, BatchConditioning(cond.spkr, None, [f0s[i]]))
            s = model.generate(xs, fs)[0]
            assert s.shape[0] == 2 * len(u) * 4
            torch.testing.assert_close(batched[i, : s.shape[0]], s, atol=2e-5, rtol=1e-4)


def _direct(model, units, cond):
    """The low-level path for one utterance: features + generate (what vocode must reproduce)."""
    with torch.no_grad():
        x, fr = model.features(torch.tensor([units]), torch.tensor([len(units)]), None, cond)
        return model.generate(x, fr)[0, : int(model.output_lengths(fr)[0])].numpy()


def test_speaker_embedding_checkpoint_is_conditioned_through_vocode(tmp_path, monkeypatch):
    monkeypatch.setattr("alignslm.vocoder.hifigan.CPU_MIN_FILL", 0.0)
    cfg = {**TINY_HIFIGAN, "multispkr": True, "embedder_params": {"embedder_type": "ecapa"}, "embedder_dim": 6,
           "model_in_dim": 16}
    cfg.pop("dur_predictor_params")
    voc = load_vocoder(save_hifigan(tmp_path, cfg, weight_normed_generator(cfg)))
    assert isinstance(voc, HifiganVocoder) and "spkr.weight" in voc.model.state_dict()
    assert voc.conditioning() == {"speaker": "embedding", "speaker_size": 6, "f0": False, "f0_bins": None}
    units = _rand_units(4, 3, 12, seed=7)
    with pytest.raises(ConditioningError, match=r"speaker embedding .*speaker=<6 floats>"):
        voc.vocode(units)
    with pytest.raises(ConditioningError, match="speaker embedding"):  # vocoder.speaker is an id: wrong kind
        HifiganVocoder(voc.model, speaker=3)
    with pytest.raises(ConditioningError, match="speaker embedding"):
        voc.vocode(units, speaker=np.zeros(5))
    with pytest.raises(ConditioningError, match="3 speaker embeddings for 4"):
        voc.vocode(units, speaker=np.zeros((3, 6)))
    embs = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    per_item = voc.vocode(units, speaker=embs, batch_size=4)  # one vector per utterance, one padded batch
    for i, u in enumerate(units):
        want = _direct(voc.model, u, BatchConditioning(spkr=torch.tensor(embs[i:i + 1])))
        np.testing.assert_allclose(per_item[i], want, atol=2e-5, err_msg=f"item {i}")
    shared = voc.vocode(units, speaker=embs[0])  # one vector for all
    np.testing.assert_allclose(shared[0], per_item[0], atol=2e-5)
    assert not np.allclose(shared[1], per_item[1], atol=1e-3)  # the embedding changes the audio
    fixed = HifiganVocoder(voc.model, speaker=embs[2])  # a default vector, given once
    np.testing.assert_allclose(fixed.vocode([units[2]])[0], per_item[2], atol=2e-5)


def test_speaker_ids_and_f0_through_vocode(tmp_path, monkeypatch):
    monkeypatch.setattr("alignslm.vocoder.hifigan.CPU_MIN_FILL", 0.0)
    cfg = {**TINY_HIFIGAN, "multispkr": True, "num_speakers": 4, "f0": True, "model_in_dim": 17}
    cfg.pop("dur_predictor_params")
    voc = HifiganVocoder(load_codegenerator(save_hifigan(tmp_path, cfg, weight_normed_generator(cfg))), speaker=1)
    assert voc.conditioning() == {"speaker": "id", "speaker_size": 4, "f0": True, "f0_bins": None}
    rng = np.random.default_rng(0)
    units = _rand_units(3, 2, 12)
    f0s = [rng.uniform(-1, 1, 2 * len(u)).astype(np.float32) for u in units]  # 2 F0 frames per unit
    with pytest.raises(ConditioningError, match=r"F0-conditioned .*f0=\["):
        voc.vocode(units)
    with pytest.raises(ConditioningError, match="2 F0 tracks for 3"):
        voc.vocode(units, f0=f0s[:2])
    with pytest.raises(ConditioningError, match=r"speaker id 4 is outside \[0, 4\)"):
        voc.vocode(units, f0=f0s, speaker=[0, 4, 1])
    out = voc.vocode(units, f0=f0s, speaker=[3, 0, 2], batch_size=3)
    for i, (u, sp) in enumerate(zip(units, [3, 0, 2])):
        want = _direct(voc.model, u, BatchConditioning(spkr=torch.tensor([sp]), f0=[torch.tensor(f0s[i])]))
        assert out[i].shape == want.shape == (2 * len(u) * 4,)
        np.testing.assert_allclose(out[i], want, atol=2e-5, err_msg=f"item {i}")
    default = voc.vocode(units[:1], f0=f0s[:1])  # the constructor's speaker 1
    np.testing.assert_allclose(default[0], _direct(voc.model, units[0], BatchConditioning(torch.tensor([1]), None,
                                                                                          [torch.tensor(f0s[0])])),
                               atol=2e-5)
    bad = [*f0s[:2], np.zeros(3 * len(units[2]) + 1, np.float32)]  # item 2 does not align with its units
    with pytest.raises(VocoderInputError, match="item 2: F0 frames and unit frames do not align"):
        voc.vocode(units, f0=bad)


def test_conditioning_a_plain_checkpoint_does_not_take_is_an_error(tmp_path):
    voc = load_vocoder(save_hifigan(tmp_path, TINY_HIFIGAN, weight_normed_generator(TINY_HIFIGAN)))
    assert voc.conditioning() == {"speaker": None, "speaker_size": None, "f0": False, "f0_bins": None}
    with pytest.raises(ConditioningError, match="no speaker conditioning"):
        voc.vocode([[1, 2, 3]], speaker=0)
    with pytest.raises(ConditioningError, match="not F0-conditioned"):
        voc.vocode([[1, 2, 3]], f0=[np.zeros(3)])
    assert HifiganVocoder(voc.model, speaker=2).speaker is None  # vocoder.speaker on it: a warning, ignored


def test_length_batches_group_similar_lengths():
    from alignslm.vocoder.hifigan import length_batches

    assert length_batches([5, 10, 9, 3, 8, 2], 3) == [[1, 2, 4], [0, 3, 5]]
    assert length_batches([5, 10, 9, 3, 8, 2], 3, min_fill=0.85) == [[1, 2], [4], [0], [3], [5]]


def test_bad_units_name_the_item(tmp_path):
    voc = load_vocoder(save_hifigan(tmp_path, TINY_HIFIGAN, weight_normed_generator(TINY_HIFIGAN)))
    with pytest.raises(VocoderInputError, match=r"item 1: unit id 20 is outside the embedding table \[0, 20\)"):
        voc.vocode([[1, 2], [3, 20]])
    with pytest.raises(VocoderInputError, match="item 0: unit id -1"):
        voc.vocode([[-1, 2]])
    with pytest.raises(VocoderInputError, match="item 2: empty unit sequence") as e:
        voc.vocode([[1], [2], []])
    assert e.value.index == 2
    with pytest.raises(VocoderInputError, match="item 0: 1 durations for 2 units"):
        voc.vocode([[1, 2]], durations=[[3]])


def test_config_weight_disagreement_names_tensor_and_shapes(tmp_path):
    d = save_hifigan(tmp_path, {**TINY_HIFIGAN, "model_in_dim": 10}, weight_normed_generator(TINY_HIFIGAN))
    with pytest.raises(CheckpointError, match=r"'conv_pre.weight' has shape \(16, 8, 7\).*implies \(16, 10, 7\)"):
        load_codegenerator(d)
    d2 = save_hifigan(tmp_path, {**TINY_HIFIGAN, "multispkr": True, "model_in_dim": 16},
                      weight_normed_generator(TINY_HIFIGAN), "hg2")
    with pytest.raises(CheckpointError, match=r"missing \['spkr.weight'\]"):
        load_codegenerator(d2)
    d3 = save_hifigan(tmp_path, {**TINY_HIFIGAN, "num_embeddings": 30}, weight_normed_generator(TINY_HIFIGAN), "hg3")
    with pytest.raises(CheckpointError, match=r"'dict.weight' has shape \(20, 8\).*\(30, 8\)"):
        load_codegenerator(d3)


def test_incomplete_or_unsafe_checkpoints_are_refused(tmp_path):
    ref = weight_normed_generator(TINY_HIFIGAN)
    d = save_hifigan(tmp_path, TINY_HIFIGAN, ref)
    sd = {k: v for k, v in ref.state_dict().items() if k != "conv_post.weight_v"}
    torch.save({"generator": sd}, f"{d}/generator.pt")
    with pytest.raises(CheckpointError, match="'conv_post' has only half of a weight-norm pair"):
        load_codegenerator(d)
    torch.save({"generator": ref.state_dict(), "extra": object.__new__(BatchConditioning)}, f"{d}/generator.pt")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_codegenerator(d)
    torch.save(ref.state_dict(), f"{d}/generator.pt")
    with pytest.raises(CheckpointError, match="expected a dict with a 'generator' state dict"):
        load_codegenerator(d)
    with pytest.raises(CheckpointError, match="missing key"):
        (tmp_path / "hg" / "config.json").write_text(json.dumps({"upsample_rates": [2]}))
        load_codegenerator(d)


def _scaled_weight_norms(gen: torch.nn.Module, scale: float) -> torch.nn.Module:
    """The helper's random init saturates the output tanh (the more channels, the more): scaling every weight
    norm down keeps the waveform inside (-1, 1), so that comparing two paths' outputs means something."""
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if name.endswith("weight_g"):
                p.mul_(scale)
    return gen


@pytest.mark.gpu
def test_batch_vocode_matches_single_on_gpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.backends.cudnn.allow_tf32 = False
    gen = _scaled_weight_norms(weight_normed_generator(TINY_HIFIGAN), 0.5)  # unscaled: 34% of samples at +-1
    voc = load_vocoder(save_hifigan(tmp_path, TINY_HIFIGAN, gen), device="cuda")
    units = _rand_units(9, 1, 40, seed=5)
    batched = voc.vocode(units, batch_size=9)
    assert max(float(np.abs(b).max()) for b in batched) < 0.9  # not saturated: the comparison means something
    for i, u in enumerate(units):
        np.testing.assert_allclose(batched[i], voc.vocode([u], batch_size=1)[0], atol=1e-4, err_msg=f"item {i}")


def test_speaker_embedding_from_the_config_file(tmp_path, monkeypatch):
    """vocoder.speaker_embedding: a .npy vector named in the config goes through the vocoder stage (checked,
    hashed as the stage's external input, written into vocoder.json) and reaches vocode(); bad files are named;
    a missing one is check_paths' (the stage graph's) one line."""
    import json

    from alignslm.config import load_config
    from alignslm.pipeline import STAGES
    from alignslm.run import check_paths
    from alignslm.rundir import StageContext
    from alignslm.stages.vocoder import check, run

    monkeypatch.setattr("alignslm.vocoder.hifigan.CPU_MIN_FILL", 0.0)
    cfg = {**TINY_HIFIGAN, "multispkr": True, "embedder_params": {"embedder_type": "ecapa"}, "embedder_dim": 6,
           "model_in_dim": 16}
    cfg.pop("dur_predictor_params")
    d = save_hifigan(tmp_path, cfg, weight_normed_generator(cfg))
    emb = np.random.default_rng(3).normal(size=6).astype(np.float32)
    np.save(tmp_path / "spk.npy", emb[None])  # (1, 6) is accepted as one vector
    tok = tmp_path / "tokenize"
    tok.mkdir()
    (tok / "tokenizer.json").write_text(json.dumps({"n_units": 10, "frame_rate": 50.0}))

    def stage(path, *extra):
        conf = load_config(overrides=["vocoder.kind=hifigan", f"vocoder.path={d}",
                                      f"vocoder.speaker_embedding={path}", *extra])
        out = tmp_path / "run" / path.stem / "vocoder"
        return conf, lambda: run(StageContext("vocoder", conf, tmp_path / "run", out, inputs={"tokenize": tok},
                                              progress=False)) and out

    assert "vocoder.speaker_embedding" in STAGES["vocoder"].external
    conf, go = stage(tmp_path / "spk.npy")
    assert check(conf) == [] and check_paths(conf) == []
    voc = load_vocoder(go())
    units = _rand_units(2, 3, 12, seed=5)
    np.testing.assert_allclose(voc.vocode(units)[1], load_vocoder(d).vocode(units, speaker=emb)[1], atol=2e-5)

    np.save(tmp_path / "bad.npy", np.zeros((2, 6)))
    (tmp_path / "junk.npy").write_text("not numpy")
    for path, msg in ((tmp_path / "bad.npy", r"one finite numeric vector, got shape \(2, 6\)"),
                      (tmp_path / "junk.npy", "not a readable .npy")):
        conf, go = stage(path)
        with pytest.raises(CheckpointError, match=msg):
            go()
    conf, go = stage(tmp_path / "none.npy")
    assert check(conf) == []  # a missing path is not the stage check's to say ...
    assert check_paths(conf) == [f"vocoder.speaker_embedding: path does not exist: {tmp_path / 'none.npy'}"]
    conf, go = stage(tmp_path / "spk.npy", "vocoder.speaker=1")
    assert any("set one" in p for p in check(conf))
    with pytest.raises(CheckpointError, match="set one"):
        go()
    np.save(tmp_path / "short.npy", np.zeros(5, np.float32))  # wrong size: the model says what it needs
    conf, go = stage(tmp_path / "short.npy")
    with pytest.raises(ConditioningError, match="6 floats"):
        load_vocoder(go())


@pytest.mark.gpu
def test_batch_vocode_matches_single_on_gpu_at_twist_size(tmp_path):
    """The GPU benchmark's vocoder (a TWIST/textlesslib-shaped unit HiFi-GAN: 512 channels, hop 320, duration
    predictor; random weights): a padded batch of 16 continuations of 40-150 units equals 16 one-at-a-time
    calls (fp32, TF32 off), lengths included."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cfg = {"resblock": "1", "upsample_rates": [5, 4, 4, 2, 2], "upsample_kernel_sizes": [11, 8, 8, 4, 4],
           "upsample_initial_channel": 512, "resblock_kernel_sizes": [3, 7, 11],
           "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "num_embeddings": 500, "embedding_dim": 128,
           "model_in_dim": 128, "code_hop_size": 320, "sampling_rate": 16000,
           "dur_predictor_params": {"encoder_embed_dim": 128, "var_pred_hidden_dim": 128, "var_pred_kernel_size": 3,
                                    "var_pred_dropout": 0.5}}
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        gen = _scaled_weight_norms(weight_normed_generator(cfg), 0.1)  # unscaled: tanh saturated everywhere
        voc = load_vocoder(save_hifigan(tmp_path, cfg, gen), device="cuda")
        units = _rand_units(16, 40, 150, seed=0)
        batched = voc.vocode(units, batch_size=16)
        assert max(float(np.abs(b).max()) for b in batched) < 0.9  # not saturated: the comparison means something
        for i, u in enumerate(units):
            single = voc.vocode([u], batch_size=1)[0]
            assert batched[i].shape == single.shape, f"item {i}"
            np.testing.assert_allclose(batched[i], single, atol=1e-4, err_msg=f"item {i}")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
