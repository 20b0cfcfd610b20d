"""The speech box: audio in, units out, and audio back to text.

- :mod:`.audio`: read any wav/flac as 16 kHz mono float32, write wavs atomically;
- :mod:`.encoders`: audio -> dense frames (HuBERT/mHuBERT, the Whisper encoder, a log-mel front end);
- :mod:`.quantizer`: frames -> units (k-means; the C++ extension ``alignslm._C`` or numpy);
- :mod:`.tokenizer`: encoder + quantizer + deduplication, saved with a run and loaded again;
- :mod:`.asr`: waveforms -> transcripts (Whisper through CTranslate2);
- :mod:`.ct2`: the one way in to CTranslate2 (its CPU backend is pinned before it loads).
"""
