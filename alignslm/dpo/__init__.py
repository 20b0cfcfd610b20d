"""The preference box: judged continuations -> chosen/rejected pairs -> a LoRA adapter trained with DPO.

- :mod:`.pairs`: Align-SLM's pair rules (score thresholds per curriculum round, repetition, the signal);
- :mod:`.losses`: sigmoid DPO, IPO, robust DPO and their standard (TRL) metric names;
- :mod:`.trainer`: the DPO trainer on a LoRA adapter (reference = the adapter disabled; DDP over ranks).
"""
