"""report/index.html: one offline page (alignslm.eval.html), checked as HTML and in a real headless Chromium.

The browser tests are skipped, with the reason, when chromium is absent (.ci/run installs it as root).
``ALIGNSLM_HTML_SHOTS=DIR`` also copies their screenshots into DIR; ``ALIGNSLM_TEST_RUN_DIR=RUN`` adds the
same browser check on a report built from a real run directory (e.g. the smoke demo's).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from browser import SKIP_REASON, Browser, chromium_path

from alignslm.eval import report as rp
from alignslm.eval.html import markdown_to_html
from alignslm.rundir import read_json, read_jsonl, write_jsonl
from alignslm.speech.audio import write_wav

needs_chromium = pytest.mark.skipif(chromium_path() is None, reason=SKIP_REASON)
HOSTILE = "<script>alert('x')</script> & \"quotes\""
PROBE = """(async () => {
  const ctx = new OfflineAudioContext(1, 1, 16000);
  const out = [];
  for (const a of document.querySelectorAll('audio')) {
    const r = {title: a.title, scheme: a.currentSrc.split(',')[0]};
    r.meta = await new Promise(res => {
      if (a.readyState >= 1) return res('ok');
      a.addEventListener('loadedmetadata', () => res('ok'), {once: true});
      a.addEventListener('error', () => res('error ' + (a.error && a.error.code)), {once: true});
      setTimeout(() => res('timeout'), 15000);
    });
    r.duration = a.duration;
    try {
      const buf = await (await fetch(a.currentSrc)).arrayBuffer();
      const pcm = await ctx.decodeAudioData(buf);
      r.frames = pcm.length;
      r.peak = pcm.getChannelData(0).reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    } catch (e) { r.decode_error = String(e); }
    out.push(r);
  }
  return out;
})()"""


def _tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds), dtype=np.float32) / 16000
    return 0.3 * np.sin(2 * np.pi * hz * t)


def _run_dir(root: Path) -> dict:
    """A small finished run: base and round-2 with held-out generations (3 prompts x k 0..1, real wavs),
    round-1 evaluated on the benchmarks only; one continuation rejected, one transcript with markup."""
    ev = root / "evaluate"
    frames = {}
    for i in range(3):
        write_wav(ev / "prompts" / f"p{i}.wav", _tone(1.0 + 0.25 * i, 220 + 40 * i))
    for m, shift in (("base", 0.0), ("round-2", 0.1)):
        rows = []
        for i in range(3):
            for k in range(2):
                rel = f"{m}/audio/p{i}_k{k}.wav"
                write_wav(ev / rel, _tone(0.5 + shift + 0.1 * i, 330 + 10 * k))
                frames[rel] = sf.info(str(ev / rel)).frames
                rejected = m == "base" and i == 1 and k == 0
                rows.append({"prompt_id": f"p{i}", "k": k, "seed": 1000 + 10 * i + k, "path": rel,
                             "prompt_path": f"prompts/p{i}.wav", "prompt_text": f"prompt {i} said",
                             "text": "" if rejected else (HOSTILE if (m, i) == ("round-2", 0) else f"{m} says {i}"),
                             "sense": None if rejected else -1.5 + 0.1 * i + shift, "perplexity": 300.0 + i,
                             "reject": "asr: no speech (no_speech_prob 0.67)" if rejected else None})
        write_jsonl(ev / m / "generations.jsonl", rows)

    def model(lex: float, gen: bool) -> dict:
        g = {"judge_metric": "sense", "judge": {"mean": -1.4, "lo": -1.6, "hi": -1.2, "n": 3},
             "autobleu": {"mean": 0.01}, "reject_share": 1 / 6} if gen else None
        return {"benchmarks": {"lexical": {"all": lex}, "syntactic": {"all": 0.6}, "ssc": {"all": 0.55},
                               "tsc": {"all": 0.5}}, "generation": g}

    return {"models": {"base": model(0.70, True), "round-1": model(0.71, False), "round-2": model(0.72, True)},
            "comparisons": {"round-2": {"judge_gain": {"diff": 0.1, "lo": -0.05, "hi": 0.25, "p_le_0": 0.2, "n": 3},
                                        "win_rate": {"mean": 0.583, "lo": 0.5, "hi": 0.667, "n": 3},
                                        "benchmarks": {"lexical": 0.02}}},
            "calibration": {"signal": {"kind": "pmi_asr"}, "classes": {"true continuation": {"mean": -1.0}},
                            "wins": {"random units": {"mean": 0.97, "lo": 0.94, "hi": 0.99}},
                            "gates": {"vs_random_ge_0.95": True}},
            "verdict": {"line": "no measurable effect of alignment (the CI contains 0.5) <b>x</b>"},
            "frames": frames}


def _build(tmp_path: Path, n_examples: int = 2, listen_k: int = 3) -> tuple[Path, dict, dict]:
    res = _run_dir(tmp_path)
    frames = res.pop("frames")
    summary = rp.build_report(res, tmp_path, tmp_path / "report", rounds=0, n_examples=n_examples, demo=True,
                              listen_k=listen_k)
    return tmp_path / "report" / "index.html", summary, frames


def test_markdown_blocks_become_escaped_html():
    md = "Intro with **bold** & `code`.\n\n| a | b <i> |\n|---|---|\n| x \\| y | 1 |\n\n- one\n  more\n- two"
    out = markdown_to_html(md)
    assert "<p>Intro with <strong>bold</strong> &amp; <code>code</code>.</p>" in out
    assert "<th>b &lt;i&gt;</th>" in out and "<td>x | y</td>" in out
    assert "<ul><li>one more</li><li>two</li></ul>" in out


def test_index_html_is_self_contained_with_every_clip_inline(tmp_path):
    page, summary, frames = _build(tmp_path)
    html = page.read_text()
    s = summary["index_html"]
    # 2 prompts, each with k = 0 and 1 (all there are, under eval.listen_k=3) x 2 models; round-1 has no generations
    assert (s["prompts"], s["k_rows"], s["clips"], s["clips_missing"]) == (2, 4, 2 + 2 * 2 * 2, 0)
    assert s["bytes"] == page.stat().st_size
    # the verdict first, escaped; tables, calibration, plots after it
    assert html.index('class="verdict"') < html.index("<table>")
    assert "the CI contains 0.5) &lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    for text in ("<th>sWUGGY</th>", "Each round against the base model", "Signal calibration", "not comparable"):
        assert text in html
    # nothing outside the page: every src is a data: URI, no link, no script
    srcs = re.findall(r'\bsrc="([^"]*)"', html)
    assert len(srcs) == 10 + 1 and all(x.startswith("data:") for x in srcs)  # 10 clips + the one plot (no rounds)
    assert "<script" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    # each audio element carries exactly its wav's bytes
    clips = re.findall(r'<audio[^>]*title="([^"]*)"[^>]*src="data:audio/wav;base64,([^"]*)"', html)
    assert [t for t, _ in clips] == ["prompt", "base continuation k=0", "round 2 continuation k=0",
                                     "base continuation k=1", "round 2 continuation k=1"] * 2
    clip_files = [(f"prompts/p{i}.wav", *(f"{m}/audio/p{i}_k{k}.wav" for k in range(2) for m in ("base", "round-2")))
                  for i in range(2)]
    wavs = [tmp_path / "evaluate" / p for files in clip_files for p in files]
    assert [base64.b64decode(b) for _, b in clips] == [w.read_bytes() for w in wavs]
    # transcripts escaped, the reject shown with its reason, the same seed for both models
    assert HOSTILE not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in html
    assert "rejected: asr: no speech (no_speech_prob 0.67)" in html
    for k, seed in ((0, 1000), (1, 1001), (0, 1010), (1, 1011)):  # each k with the seed both models used
        assert f'k = {k} <span class="note">(seed {seed})</span>' in html
    assert "signal -1.500; judge perplexity 300" in html


def test_missing_audio_is_said_on_the_page(tmp_path):
    res = _run_dir(tmp_path)
    res.pop("frames")
    (tmp_path / "evaluate" / "round-2" / "audio" / "p0_k0.wav").unlink()
    s = rp.build_report(res, tmp_path, tmp_path / "report", rounds=0, n_examples=1)["index_html"]
    assert (s["clips"], s["clips_missing"]) == (4, 1)
    assert "continuation audio not found" in (tmp_path / "report" / "index.html").read_text()


def test_listen_k_caps_the_continuations_per_prompt_and_a_missing_k_is_said(tmp_path):
    page, summary, _ = _build(tmp_path, n_examples=3, listen_k=1)
    assert (summary["index_html"]["k_rows"], summary["index_html"]["clips"]) == (3, 3 + 3 * 2)
    assert "continuation k=1" not in page.read_text()
    rows = [r for r in read_jsonl(tmp_path / "evaluate" / "round-2" / "generations.jsonl")
            if (r["prompt_id"], r["k"]) != ("p2", 1)]  # round 2 lacks one k that the base model has
    write_jsonl(tmp_path / "evaluate" / "round-2" / "generations.jsonl", rows)
    res = read_json(tmp_path / "report" / "results.json")
    s = rp.build_report(res, tmp_path, tmp_path / "report2", rounds=0, n_examples=3, listen_k=0)["index_html"]
    assert (s["k_rows"], s["clips"], s["clips_missing"]) == (6, 3 + 6 * 2 - 1, 1)
    assert "no continuation with this k" in (tmp_path / "report2" / "index.html").read_text()


def _check_in_browser(page: Path, shots: Path, frames: dict[str, int] | None = None) -> list[dict]:
    """Open the page in headless Chromium: no console error, no request beyond the page itself, every audio
    element's source loads and decodes (WebAudio); screenshots of the top and of the whole page."""
    url = page.resolve().as_uri()
    with Browser(chromium_path(), shots / "profile") as b:
        b.open(url)
        audio = b.evaluate(PROBE)
        top = b.screenshot(shots / "index-top.png")
        full = b.screenshot(shots / "index-full.png", full_page=True)
        problems, requests = b.problems(), b.requests()
    assert problems == []
    assert [u for u in requests if u != url and not u.startswith("data:")] == []
    assert audio and all(a["scheme"] == "data:audio/wav;base64" for a in audio)
    assert all(a["meta"] == "ok" and "decode_error" not in a and a["frames"] > 0 and a["peak"] > 0.01
               for a in audio), audio
    for png in (top, full):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    if os.environ.get("ALIGNSLM_HTML_SHOTS"):
        dst = Path(os.environ["ALIGNSLM_HTML_SHOTS"])
        dst.mkdir(parents=True, exist_ok=True)
        for png in (top, full):
            shutil.copyfile(png, dst / f"{page.parent.parent.name}-{png.name}")
    return audio


@needs_chromium
def test_index_html_in_headless_chromium(tmp_path):
    page, _, frames = _build(tmp_path)
    audio = _check_in_browser(page, tmp_path)
    want = [frames[f"{m}/audio/p{i}_k{k}.wav"] for i in range(2) for k in range(2) for m in ("base", "round-2")]
    got = [a["frames"] for a in audio if a["title"] != "prompt"]
    assert got == want  # decoded at the file's own rate (16 kHz): every sample is there
    assert [round(a["duration"], 3) for a in audio if a["title"] == "prompt"] == [1.0, 1.25]


@needs_chromium
@pytest.mark.skipif(not os.environ.get("ALIGNSLM_TEST_RUN_DIR"),
                    reason="ALIGNSLM_TEST_RUN_DIR (a finished run directory) not set")
def test_index_html_of_a_real_run_in_headless_chromium(tmp_path):
    run = Path(os.environ["ALIGNSLM_TEST_RUN_DIR"])
    res = read_json(run / "evaluate" / "results.json")
    rounds = sum(1 for n in res["models"] if n.startswith("round-"))
    out = tmp_path / run.name / "report"
    s = rp.build_report(res, run, out, rounds=rounds, n_examples=3, demo=bool(res.get("demo", True)))
    assert s["index_html"]["clips"] > 0 and s["index_html"]["clips_missing"] == 0
    audio = _check_in_browser(out / "index.html", tmp_path)
    assert len(audio) == s["index_html"]["clips"]
