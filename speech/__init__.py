"""speechlora's model and its jobs: checkpoint loading, prompts, decoding, long-audio transcription.

The Python API in one screen::

    from speech import SpeechModel, Task
    model = SpeechModel.load()                      # the built-in model; or SpeechModel.load("/path/to/Phi-4-multimodal-instruct")
    results = model.transcribe(["a.wav", "b.flac"])  # -> list[Transcript]
    print(results[0].text, [(s.start, s.end) for s in results[0].segments])
    model.transcribe(["a.wav"], task=Task("translate", target_lang="fr"))
"""
