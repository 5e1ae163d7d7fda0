"""The Whisper runner: what runs inside train/evaluate jobs (python -m gpujob.runner SPEC)."""
