"""Make tests/data/speech_en/: a few short English medical sentences spoken by espeak-ng, as 16 kHz mono OGG Vorbis,
with their transcripts in transcripts.jsonl (read by tests/component/models/test_ct2_whisper.py).

Each clip is `espeak-ng -v en-us -s 150 -w <clip>.wav "<text>"` (espeak-ng 1.51 writes 22050 Hz 16-bit mono),
resampled to 16 kHz with scipy's polyphase filter (320/441) and written with soundfile (Vorbis, quality 0.4).
The tests need only the files, not espeak-ng.

Run: python scripts/make_speech_en.py   (needs espeak-ng: apt-get install -y espeak-ng)
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "speech_en"
SENTENCES = {
    "fever": "The patient has a fever and a sore throat.",
    "blood_pressure": "Her blood pressure was high, so the doctor ordered more tests.",
    "medicine": "Please take this medicine twice a day after meals.",
}
RATE = 16_000


def speak(text: str, wav: Path) -> np.ndarray:
    """`text` spoken by espeak-ng (American English, 150 words a minute) as float32 samples at 16 kHz."""
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
    audio, rate = sf.read(wav, dtype="float32")
    g = np.gcd(RATE, rate)
    return resample_poly(audio, RATE // g, rate // g).astype(np.float32)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in SENTENCES.items():
            audio = speak(text, Path(tmp) / f"{name}.wav")
            sf.write(OUT / f"{name}.ogg", audio, RATE, format="OGG", subtype="VORBIS",
                     compression_level=0.6)  # 0 = best quality; 0.6: ~20 KB a clip
            rows.append({"audio": f"{name}.ogg", "text": text})
    (OUT / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} clips to {OUT}")


if __name__ == "__main__":
    main()
