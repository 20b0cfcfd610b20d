"""The offline demo world: seeded short stories over ten topics (stories, lexicon), spoken by eSpeak NG
through ctypes with word times and an on-disk cache (tts), the demo corpus (corpus) and the mini
benchmarks in the official ZeroSpeech / Spoken StoryCloze layouts (benchmarks)."""
