"""The unit language model box: load it, pretrain the demo one, cut prompts, sample continuations.

- :mod:`.unitlm`: a unit LM (the demo LLaMA or a TWIST checkpoint) behind one interface, with its unit ids;
- :mod:`.pretrain`: the demo unit LM trained from scratch on unit sequences;
- :mod:`.prompts`: the first P seconds of an utterance as units, cut at a word end when word times are known;
- :mod:`.sampler`: batched continuations with a KV-cached decode loop (kernel: ``alignslm.kernels.sampling``).
"""
