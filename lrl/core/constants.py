"""Facts every layer shares, defined once: the sample rate models hear, the audio file suffixes lrl
reads, the manifest columns that can hold a transcript."""

from __future__ import annotations

SAMPLE_RATE = 16000  # Hz: what Wav2Vec2 / XLS-R / MMS checkpoints were pretrained on; prepared datasets hold it
# Audio files lrl reads from folders (soundfile decodes most; ffmpeg is the fallback for the rest).
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".aiff", ".aif")
# Manifest / TSV columns that may hold the transcript, in the order they are tried.
TEXT_COLUMNS = ("sentence", "text", "transcript", "transcription", "normalized_text", "label")
