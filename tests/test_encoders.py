"""Speech encoders: a tiny random HubertModel saved/loaded by path, the CTranslate2 Whisper encoder, log-mel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignslm.speech.encoders import EncoderError, HubertEncoder, LogMelEncoder, WhisperEncoder, build_encoder
from alignslm.speech.quantizer import assign as q_assign
from alignslm.speech.quantizer import fit


def speechlike(n: int, seed: int) -> np.ndarray:
    """Harmonic tone with a wandering pitch and a syllable-rate envelope: (n,) float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    f0 = 110 + 60 * rng.random() + 30 * np.sin(2 * np.pi * (0.5 + rng.random()) * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(rng.random() / k * np.sin(k * phase) for k in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * (3 + 2 * rng.random()) * t) ** 2
    return (0.3 * x * env + 0.01 * rng.standard_normal(n)).astype(np.float32)


def tiny_hubert(tmp_path, norm: str) -> str:
    from transformers import HubertConfig, HubertModel

    cfg = HubertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=2, feat_extract_norm=norm,
                       do_stable_layer_norm=(norm == "layer"))
    torch.manual_seed(0)
    d = tmp_path / f"hubert-{norm}"
    HubertModel(cfg).save_pretrained(d)
    return str(d)


LENGTHS = [4000, 3000, 5123, 4000, 2500, 3333]


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_hubert_batched_equals_one_at_a_time(tmp_path, norm):
    enc = HubertEncoder(tiny_hubert(tmp_path, norm), layer=2, batch_size=8)
    wavs = [speechlike(n, i) for i, n in enumerate(LENGTHS)]
    batched = enc.encode(wavs)
    single = [enc.encode([w])[0] for w in wavs]
    for w, a, b in zip(wavs, batched, single):
        assert a.shape == b.shape == (enc.n_frames(w.size), 32)
        np.testing.assert_allclose(a, b, atol=1e-4)
    C = fit(np.concatenate(single), 8, iters=5, seed=0)
    for a, b in zip(batched, single):
        assert np.array_equal(q_assign(a, C), q_assign(b, C))


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_hubert_matches_hidden_states_of_the_full_model(tmp_path, norm):
    from transformers import HubertModel

    path = tiny_hubert(tmp_path, norm)
    enc = HubertEncoder(path, layer=2, normalize=False)
    assert len(enc.model.encoder.layers) == 2  # the layer above is not computed
    w = speechlike(4321, 7)
    ref_model = HubertModel.from_pretrained(path).eval()
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(w)[None], output_hidden_states=True).hidden_states[2][0].numpy()
    np.testing.assert_allclose(enc.encode([w])[0], ref, atol=1e-5)


def test_hubert_padding_without_mask_would_change_features(tmp_path):
    """Why the mask matters: the same short utterance padded in a batch, with no mask, gives other frames."""
    from transformers import HubertModel

    path = tiny_hubert(tmp_path, "layer")
    enc = HubertEncoder(path, layer=2, normalize=False)
    short, long = speechlike(2500, 1), speechlike(6000, 2)
    ours = enc.encode([short, long])[0]
    m = HubertModel.from_pretrained(path).eval()
    x = torch.zeros(2, 6000)
    x[0, :2500], x[1] = torch.from_numpy(short), torch.from_numpy(long)
    with torch.no_grad():
        nomask = m(x, output_hidden_states=True).hidden_states[2][0, : ours.shape[0]].numpy()
    assert np.abs(nomask - ours).max() > 1e-3


def test_hubert_errors(tmp_path):
    with pytest.raises(EncoderError, match="no config.json"):
        HubertEncoder(tmp_path)
    with pytest.raises(EncoderError, match="layers"):
        HubertEncoder(tiny_hubert(tmp_path, "group"), layer=4)
    with pytest.raises(EncoderError, match="encoder_path"):
        build_encoder("hubert", None)
    with pytest.raises(EncoderError, match="unknown encoder"):
        build_encoder("wav2vec9")


@pytest.fixture(scope="module")
def whisper():
    return WhisperEncoder(batch_size=4)


def test_whisper_frames_trimmed_and_batch_independent(whisper):
    wavs = [speechlike(n, i) for i, n in enumerate([16000, 24000, 16000, 9999, 40000])]
    batched = whisper.encode(wavs)
    assert whisper.dim == 384 and whisper.frame_rate == 50.0
    for w, a in zip(wavs, batched):
        assert a.shape == (w.size // 320, 384) and a.dtype == np.float32
    for w, a in zip(wavs, batched):
        np.testing.assert_allclose(whisper.encode([w])[0], a, atol=1e-4)
    again = whisper.encode(wavs)  # same audio, same frames, run after run
    assert all(np.array_equal(a, b) for a, b in zip(batched, again))


def test_whisper_pooled_to_25hz_is_the_mean_of_frame_pairs(whisper):
    w = speechlike(16000 + 500, 3)
    pooled = WhisperEncoder(pool=2).encode([w])[0]
    full = whisper.encode([w])[0]
    assert pooled.shape == (w.size // 640, 384)
    np.testing.assert_allclose(pooled, full[: 2 * pooled.shape[0]].reshape(-1, 2, 384).mean(1), atol=1e-5)


def test_whisper_rejects_too_long_and_wrong_shape(whisper):
    with pytest.raises(EncoderError, match="30 s"):
        whisper.encode([np.zeros(16000 * 31, np.float32)])
    with pytest.raises(EncoderError, match="1-D"):
        whisper.encode([np.zeros((2, 16000), np.float32)])
    with pytest.raises(EncoderError, match="model.bin"):
        WhisperEncoder("/nonexistent")


def test_logmel_shapes_and_normalisation():
    enc = LogMelEncoder(pool=2)
    w = speechlike(16000 * 2 + 100, 4)
    (x,) = enc.encode([w])
    assert x.shape == (w.size // 640, 80) and enc.frame_rate == 25.0
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(0), 1, atol=1e-2)
    with pytest.raises(EncoderError, match="shorter than one frame"):
        enc.encode([np.ones(100, np.float32)])


def test_logmel_cepstra_frames_do_not_depend_on_the_rest_of_the_utterance():
    """An isolated word must get the frames it gets inside a longer utterance (issue 6: benchmark words are
    spoken alone, the LM learns them inside stories).  Per-utterance normalisation breaks this."""
    a = speechlike(16000, 1)
    longer = np.concatenate([a, 0.25 * a[::-1]])  # quieter tail: the utterance's log-mel maximum is in ``a``
    n = a.size // 320 - 3  # frames of ``a`` away from its end (the STFT window straddles the join)
    for norm in ("cepstra", "none"):
        enc = LogMelEncoder(norm=norm)
        alone, inside = enc.encode([a])[0], enc.encode([longer])[0]
        np.testing.assert_allclose(inside[:n], alone[:n], atol=1e-4)
    utt = LogMelEncoder(norm="utterance")
    assert np.abs(utt.encode([longer])[0][:n] - utt.encode([a])[0][:n]).max() > 0.1


def test_logmel_cepstra_shape_gain_invariance_and_tokenizer_round_trip(tmp_path):
    import json

    from alignslm.speech.quantizer import Quantizer
    from alignslm.speech.tokenizer import Tokenizer, load_tokenizer

    enc = build_encoder("logmel", norm="cepstra", cepstra=19)
    w = speechlike(16000 + 500, 3)
    (x,) = enc.encode([w])
    assert x.shape == (w.size // 320, 19) and enc.dim == 19 and enc.name.endswith(":c19")
    np.testing.assert_allclose(enc.encode([0.3 * w])[0], x, atol=1e-4)  # loudness lives in c0 (dropped)
    assert np.abs(LogMelEncoder(norm="none").encode([0.3 * w])[0] - LogMelEncoder(norm="none").encode([w])[0]
                  ).max() > 0.1
    Tokenizer(enc, Quantizer(x[::7].copy()), dedup=False).save(tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.encoder.norm == "cepstra" and tok.encoder.dim == 19
    assert tok.encode([w])[0][0].tolist() == Quantizer(x[::7].copy()).assign(x).tolist()
    # a tokenizer.json written before tokenize.norm existed means per-utterance normalised log-mel bands
    utt = LogMelEncoder()
    Tokenizer(utt, Quantizer(utt.encode([w])[0][::7].copy())).save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "tokenizer.json").read_text())
    del meta["norm"]
    (tmp_path / "old" / "tokenizer.json").write_text(json.dumps(meta))
    assert load_tokenizer(tmp_path / "old").encoder.norm == "utterance"
    with pytest.raises(EncoderError, match="choose one of"):
        LogMelEncoder(norm="speaker")
    with pytest.raises(EncoderError, match="cepstral coefficients"):
        LogMelEncoder(norm="cepstra", cepstra=80)
