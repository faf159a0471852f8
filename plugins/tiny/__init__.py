"""Speech models built offline, not runtime plugins: a random Whisper of a real shape for
faster-whisper (`omoide models tiny-whisper`) and a tiny Piper voice (`omoide models tiny-voice`),
for tests of the plumbing and for benchmarks at sizes that cannot be downloaded here. Their model
counterpart, the tiny persona model, is persona_model/tiny.py (it writes the persona model's chat
template, which a plugin may not import)."""
