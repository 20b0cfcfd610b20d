"""Pipeline stages. Each module defines ``run(ctx: StageContext) -> dict`` (the stage summary) and may
define ``check(cfg) -> list[str]`` (problems found by ``--dry-run`` without heavy work).

The artifact contract between stages (paths relative to the run directory; round stages live under
``round-N/<stage>/``; ``ctx.inputs[<dep>]`` is the directory of a dependency, see alignslm.pipeline):

corpus/manifest.jsonl      utt_id, path (wav, 16 kHz mono; the demo's relative to corpus/, a real one's absolute:
                           read it as corpus_dir / path), text, words [{word,start,end}] (s),
                           voice, rate, topic, story_id, split (train|dev|test), duration (s),
                           sentences [str] (demo only; a real manifest may carry only utt_id, path);
                           demo also: sentence_spans [[start,end]] (s) or null; a word eSpeak joined
                           to the previous one ("in the") carries approx: true (interpolated onset)
corpus/stories.jsonl       (demo) story_id, utt_id, topic, sentences, text, verb, obj, number, result, split
benchmarks/benchmarks.json {"root": <dir with lexical/ syntactic/ ssc/ tsc/ in the official layouts; the demo's
                           is "data", relative to benchmarks/: read it as benchmarks_dir / root>,
                           "split", "source": demo|real, "sets": {name: counts}}; read the sets with
                           alignslm.eval.benchdata (load_zerospeech / load_storycloze / load_all);
                           demo root also has texts.jsonl (benchmark, file, text, correct)
tokenize/units.jsonl       utt_id, units [int], durations [int], n_frames, encoder, quantizer
tokenize/quantizer.npy     centroids (K, D) float32 + quantizer.json (k, dim, source, versions)
tokenize/tokenizer.json    what alignslm.speech.tokenizer.load_tokenizer(dir) needs to tokenise new audio
                           (encoder, encoder_path, layer, pool, frame_rate, n_units, dedup, ...)
tokenize/feature_scale.npy (D,) float32, optional: frames are multiplied by it before the nearest-centroid
                           search (the centroids live in the scaled space); use load_tokenizer, not the .npy
unitlm/unitlm.json         {"path": <HF model dir; the demo's "model", relative to unitlm/>, "offset", "n_units", ...};
                           load with alignslm.lm.unitlm
vocoder/vocoder.json       {"kind", "path", ...}; load with alignslm.vocoder.load_vocoder(dir)
round-N/sample/samples.jsonl     prompt_id, utt_id, k, seed, prompt [int], continuation [int],
                                 prompt_end_s (where the prompt was cut in the original audio)
round-N/vocode/audio.jsonl       prompt_id, k, path (wav of the continuation), seconds,
                                 prompt_path (wav of the prompt, cut from the original audio);
                                 both paths relative to round-N/vocode/
round-N/transcribe/transcripts.jsonl  prompt_id, k, prompt_text, text, error (null, or why text is "")
round-N/judge/judgments.jsonl   prompt_id, k, score (float|null), perplexity (float|null), autobleu, raw,
                                error (null, or why the metric is missing), prompt_text, text,
                                asked (false: failed upstream or unjudgeable text, never sent to the judge)
round-N/pairs/pairs.jsonl       prompt_id, prompt, chosen, rejected (unit lists), chosen_score,
                                rejected_score (the judge.mode metric), metric, prompt_text, chosen_text,
                                rejected_text; round-N/pairs/summary.json (histogram, pairs per prompt)
round-N/train/adapter/          peft LoRA adapter (safetensors), CUMULATIVE: base + this adapter alone is the
                                round-N policy (load_unitlm(unitlm, adapters=[round-N/train]); never a list of
                                rounds); train_log.jsonl (step, lr, loss, rewards/*, logps/*), policy.json
evaluate/results.json           per model (base, round-1, ...) benchmark + generation metrics
report/report.md, report/results.json, report/headline.md, report/*.png, report/index.html (one offline page:
                                tables, plots and audio inline; alignslm.eval.html)
Every stage: rejects.jsonl (id, reason) for items its last attempt could not process.  Paths written inside the
run directory are relative (to the file's stage directory unless said otherwise), so a run directory moves.
manifest.json records, per finished stage, the size and content hash of every file it wrote (rundir.Manifest).
A stage whose summary has items_tried/items_failed fails (and is not recorded as finished) when all, or more
than run.max_failed_share, of them failed (alignslm.pipeline.failure_problem); its shards and rejects are then
moved to failed-attempt/ so that the same command redoes those items.
"""
