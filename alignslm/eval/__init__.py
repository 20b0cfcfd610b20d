"""The evaluation box: benchmark data, scoring, generation metrics and the report.

- :mod:`.benchdata`: loaders for the ZeroSpeech 2021 (sWUGGY, sBLIMP) and Spoken StoryCloze (sSC, tSC) layouts;
- :mod:`.scoring`: utterance log-likelihoods under the unit LM and the benchmarks' official scoring;
- :mod:`.loglik`: per-token log-likelihoods for the rules that need more than a sum or a mean;
- :mod:`.continuation`: continuation-only sSC/tSC (the endings scored given the shared story);
- :mod:`.salmon`, :mod:`.prosaudit`: SALMon and ProsAudit, loaded and scored as their official tools do;
- :mod:`.suites`: those suites as the benchmarks and evaluate stages run them;
- :mod:`.generation`: continuations of held-out prompts, sampled, vocoded, transcribed and judged with the
  rounds' per-item functions;
- :mod:`.stats`: their statistics (per-model summaries, paired win rates, the signal's calibration) with
  bootstrap confidence intervals;
- :mod:`.genppl`: GenPPL, the perplexity of the continuations' transcripts under a fixed text LM;
- :mod:`.report`: the markdown report and its plots (every per-model table built by :mod:`.tables`);
- :mod:`.html`: ``report/index.html``, one offline page with the plots and the audio.
"""
