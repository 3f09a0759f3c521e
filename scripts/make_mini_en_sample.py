#!/usr/bin/env python3
"""Generate the small synthetic English medical sample (speech + text) under data/mini_en/.

A limited-domain set that small real pretrained models (Whisper base, SmolLM2-135M-Instruct)
can learn from in a few minutes: short patient/clinician utterances for ASR, one-sentence
medical QA for text and spoken questions. Everything is synthetic: the text comes from the
fixed lists and templates below, the audio is spoken by espeak-ng with several English
Klatt voices and speeds, trimmed, resampled to 16 kHz mono (scipy polyphase) and stored as
OGG Opus. Validation holds out sentences, question phrasings and a voice.

The voices, speeds and codec were chosen so that the clips stay intelligible to Whisper base (its
frozen encoder is what the speech LLMs built on this sample listen with): espeak-ng's default
formant voices and low-bitrate Vorbis gave Whisper base a WER near 0.5 on the held-out clips.

Usage:
    apt-get install -y espeak-ng          # only needed to regenerate; the committed files need nothing
    .venv/bin/python scripts/make_mini_en_sample.py [--out data/mini_en] [--seed 20250301]

The output is byte-for-byte reproducible for a given espeak-ng / libsndfile / libopus /
scipy version: a fixed seed, no dither, and every OGG page gets a fixed stream serial
(libsndfile picks a random one otherwise).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "data" / "mini_en"
DEFAULT_SEED = 20250301

SAMPLE_RATE = 16_000
ESPEAK_RATE = 22_050  # what espeak-ng writes
PEAK = 0.7  # -3 dBFS
PAD_SECONDS = 0.10
TRIM_THRESHOLD = 0.01
# soundfile compression_level for Opus (0 best .. 1 smallest; libsndfile maps it to the bitrate): 0.9 is ~25 kbit/s
# VBR, transparent for Whisper base on these voices (0.95, ~18 kbit/s, starts to cost words), + ~0.9 kB headers a clip.
OPUS_COMPRESSION = 0.9
MIN_SECONDS, MAX_SECONDS = 0.5, 8.0
MAX_FOLDER_BYTES = 4 * 1024 * 1024

# espeak-ng's Klatt synthesiser variants (klatt .. klatt5: different voicing sources) are the voices Whisper base
# transcribes best; the default formant voices and the +f/+m variants cost it 2-3x the words (+f4 and
# en-gb-scotland most). Note: espeak-ng 1.51 ignores a variant after "en-gb" ("en-gb+m3" is plain "en-gb").
TRAIN_VOICES: tuple[str, ...] = ("en-us+klatt", "en-us+klatt3", "en-us+klatt4", "en-us+klatt5", "en-gb-x-rp+klatt2")
HELDOUT_VOICES: tuple[str, ...] = ("en-us+klatt2",)  # never in a train row
RATES: tuple[int, ...] = (140, 150, 160, 170)  # words per minute
# measured on this script's output when the voices were chosen (transformers Whisper base, greedy, language "en")
WHISPER_CHECK = ("it transcribes the 40 ASR validation clips at WER 0.08 (CER 0.06) and the first 40 train clips at "
                 "WER 0.14 (each Klatt voice 0.05-0.10 on 20 further train sentences at 150 wpm), against WER 0.49 "
                 "for the earlier default/+f/+m voices stored as ~22 kbit/s Vorbis (0.13-0.46 per voice even as WAV).")

N_ASR_VAL = 40
N_TEXT_QA_TRAIN, N_TEXT_QA_VAL = 150, 30
N_SPEECH_QA_TRAIN, N_SPEECH_QA_VAL = 80, 20
ASR_MIN_WORDS, ASR_MAX_WORDS = 3, 12

# ----------------------------------------------------------------------------------------- ASR sentences

SYMPTOMS = ("a headache", "a fever", "a dry cough", "a sore throat", "back pain", "chest pain", "a runny nose",
            "stomach pain", "an itchy rash", "ear pain", "diarrhea", "a toothache", "a stiff neck", "heartburn")
DURATIONS = ("two days", "three days", "four days", "a week", "two weeks", "a month")
BODY_PARTS = ("knee", "back", "shoulder", "neck", "wrist", "ankle", "hip", "elbow", "chest")
ACTIVITIES = ("walk", "climb stairs", "bend over", "lift things", "turn around", "sit down", "run", "stand up",
              "breathe deeply")
FEELINGS = ("dizzy", "tired", "sick", "weak", "short of breath", "nauseous", "anxious", "cold")
WHEN_FEEL = ("in the morning", "after eating", "at night", "when I stand up", "after exercise", "most of the day")
DOSES = ("one tablet", "two tablets", "one capsule", "two capsules", "half a tablet")
FREQUENCIES = ("once a day", "twice a day", "three times a day", "every eight hours", "every morning")
TIMINGS = ("with food", "after meals", "before bed", "with water", "on an empty stomach")
ALLERGENS = ("penicillin", "aspirin", "peanuts", "latex", "ibuprofen", "shellfish", "eggs", "bee stings", "codeine",
             "sulfa drugs")
INSTRUCTIONS = ("roll up your sleeve", "take a deep breath", "lie down on the bed", "open your mouth wide",
                "sit on the chair", "step on the scale", "cough for me", "hold your breath",
                "follow my finger with your eyes", "relax your arm", "say ah", "stand up slowly",
                "breathe out slowly", "point to where it hurts", "keep the bandage dry", "rest your arm on the table")
TESTS = ("blood test", "urine test", "cholesterol", "thyroid", "allergy", "liver")
TEST_STATES = ("are normal", "look good", "are a little high", "came back today", "will be ready tomorrow",
               "need a second look")
REFILLS = ("blood pressure pills", "inhaler", "insulin", "thyroid medicine", "allergy tablets", "sleeping pills",
           "pain medicine", "eye drops", "metformin", "heart medicine")
COMBINE_DRUGS = ("ibuprofen", "paracetamol", "aspirin", "antibiotics", "cough syrup", "allergy tablets")
COMBINE_WITH = ("my vitamins", "alcohol", "my blood pressure pills", "coffee", "ibuprofen", "paracetamol")
RELATIVES = ("son", "daughter", "husband", "wife", "mother", "father", "baby")
RELATIVE_SYMPTOMS = ("a high fever", "a bad cough", "a rash", "diarrhea", "an earache", "a headache",
                     "a sore throat")
SINCE = ("last night", "yesterday", "this morning", "Monday", "the weekend")
FORGOT = ("pills", "insulin", "antibiotics", "blood thinner", "inhaler", "thyroid tablet")
FORGOT_WHEN = ("this morning", "last night", "yesterday", "at lunch")
SIDE_EFFECT_DRUGS = ("medicine", "pill", "tablet", "new medicine", "cough syrup")
SIDE_EFFECTS = ("sleepy", "dizzy", "sick", "restless", "thirsty", "tired", "shaky")
FIXED_SENTENCES = (
    "Is it safe to drive after this injection?",
    "Do I need to fast before the blood test?",
    "How many days should I stay home?",
    "Should I keep taking the antibiotics?",
    "The nurse will call your name soon.",
    "The doctor will see you now.",
    "Drink plenty of water and get some rest.",
    "Come back if the fever does not go away.",
    "Wash the wound gently with soap and water.",
    "Avoid heavy lifting for two weeks.",
    "Your blood pressure is one hundred and thirty over eighty.",
    "Your temperature is thirty eight point five degrees.",
    "My heart beats very fast at night.",
    "I cannot sleep because of the pain.",
    "It hurts more in the evening.",
    "I'm feeling much better today.",
    "I don't want to take sleeping pills.",
    "I've been coughing up yellow mucus.",
    "I can't move my fingers very well.",
    "It's been hard to breathe since Tuesday.",
)

# (template, slot lists, how many combinations to keep)
ASR_TEMPLATES: tuple[tuple[str, tuple[tuple[str, ...], ...], int], ...] = (
    ("I have had {} for {}.", (SYMPTOMS, DURATIONS), 33),
    ("My {} hurts when I {}.", (BODY_PARTS, ACTIVITIES), 30),
    ("I feel {} {}.", (FEELINGS, WHEN_FEEL), 26),
    ("Take {} {} {}.", (DOSES, FREQUENCIES, TIMINGS), 30),
    ("I am allergic to {}.", (ALLERGENS,), len(ALLERGENS)),
    ("Please {}.", (INSTRUCTIONS,), len(INSTRUCTIONS)),
    ("Your {} results {}.", (TESTS, TEST_STATES), 18),
    ("I need a refill of my {}.", (REFILLS,), len(REFILLS)),
    ("I ran out of my {} yesterday.", (REFILLS,), 6),
    ("Can I take {} with {}?", (COMBINE_DRUGS, COMBINE_WITH), 15),
    ("My {} has had {} since {}.", (RELATIVES, RELATIVE_SYMPTOMS, SINCE), 30),
    ("I forgot to take my {} {}.", (FORGOT, FORGOT_WHEN), 12),
    ("This {} makes me feel {}.", (SIDE_EFFECT_DRUGS, SIDE_EFFECTS), 12),
)

# ----------------------------------------------------------------------------------------- QA facts

DEPARTMENTS: tuple[tuple[str, str], ...] = (
    ("a skin rash", "the dermatology clinic"),
    ("bad acne", "the dermatology clinic"),
    ("ear pain", "an ear, nose and throat clinic"),
    ("hearing loss", "an ear, nose and throat clinic"),
    ("blurred vision", "an eye clinic"),
    ("red, itchy eyes", "an eye clinic"),
    ("a toothache", "a dentist"),
    ("bleeding gums", "a dentist"),
    ("knee pain after a fall", "the orthopedic clinic"),
    ("a painful shoulder", "the orthopedic clinic"),
    ("burning when passing urine", "the urology clinic"),
    ("heartburn after meals", "the gastroenterology clinic"),
    ("a cough that lasts for weeks", "the respiratory clinic"),
    ("wheezing", "the respiratory clinic"),
    ("constant low mood", "the mental health clinic"),
    ("panic attacks", "the mental health clinic"),
    ("frequent migraines", "the neurology clinic"),
    ("numbness in one hand", "the neurology clinic"),
    ("a racing heartbeat", "the cardiology clinic"),
    ("swollen ankles", "the cardiology clinic"),
    ("sudden crushing chest pain", "the emergency department"),
    ("a deep cut that keeps bleeding", "the emergency department"),
)
DEPARTMENT_QUESTIONS = (
    "Which department should I visit for {s}?",
    "What kind of doctor should I see for {s}?",
    "Where should I go to get help with {s}?",
    "Who should I see about {s}?",
)
DEPARTMENT_ANSWER = "For {s}, you should go to {d}."

# name, take/use, what it is for, how to take it
DRUGS: tuple[tuple[str, str, str, str], ...] = (
    ("ibuprofen", "take", "pain, fever and swelling", "Take ibuprofen with food to protect your stomach."),
    ("paracetamol", "take", "mild pain and fever",
     "Never take more paracetamol than the daily limit shown on the label."),
    ("amoxicillin", "take", "bacterial infections such as ear and chest infections",
     "Take amoxicillin at evenly spaced times and finish the whole course."),
    ("metformin", "take", "type two diabetes", "Take metformin with meals to reduce stomach upset."),
    ("amlodipine", "take", "high blood pressure", "Take amlodipine once a day at the same time each day."),
    ("atorvastatin", "take", "high cholesterol",
     "Take atorvastatin once a day and tell your doctor about any muscle pain."),
    ("omeprazole", "take", "heartburn and stomach ulcers", "Take omeprazole before breakfast on an empty stomach."),
    ("a salbutamol inhaler", "use", "wheezing and breathlessness in asthma",
     "Shake the salbutamol inhaler and use it when you feel short of breath."),
    ("cetirizine", "take", "hay fever and other allergies",
     "Take cetirizine once a day, and be careful because it can make you sleepy."),
    ("loperamide", "take", "short bouts of diarrhea",
     "Take loperamide after each loose stool and drink plenty of fluids."),
    ("levothyroxine", "take", "an underactive thyroid",
     "Take levothyroxine in the morning on an empty stomach."),
    ("sertraline", "take", "depression and anxiety", "Take sertraline every day and do not stop it suddenly."),
    ("warfarin", "take", "preventing blood clots",
     "Take warfarin at the same time each day and keep your regular blood test appointments."),
    ("hydrocortisone cream", "use", "itchy, inflamed skin",
     "Apply a thin layer of hydrocortisone cream to the affected skin once or twice a day."),
    ("ondansetron", "take", "nausea and vomiting", "Take ondansetron with water when you feel sick, as prescribed."),
    ("an antacid", "take", "indigestion and heartburn", "Take an antacid after meals or when heartburn starts."),
)
DRUG_USE_QUESTIONS = (
    "What is {d} used for?",
    "What does {d} treat?",
    "Why would a doctor prescribe {d}?",
    "My doctor gave me {d}. What is it for?",
)
DRUG_USE_ANSWER = "{D} is used for {u}."
DRUG_HOW_QUESTIONS = (
    "How should I {v} {d}?",
    "What is the right way to {v} {d}?",
    "Do you have any advice for using {d}?",
)

SELF_CARE: tuple[tuple[str, str], ...] = (
    ("a mild fever", "Rest, drink plenty of fluids and take paracetamol if you feel unwell."),
    ("a common cold", "Rest and drink warm fluids, and it should pass within about a week."),
    ("a sprained ankle", "Rest the ankle, put ice on it and keep it raised."),
    ("a small burn", "Cool the burn under cool running water for twenty minutes."),
    ("a nosebleed", "Sit up, lean forward and pinch the soft part of your nose for ten minutes."),
    ("mild diarrhea", "Drink plenty of fluids and eat small, plain meals until it settles."),
    ("trouble sleeping", "Keep regular sleep times and avoid screens and caffeine before bed."),
    ("a tension headache", "Rest, drink water and take a simple painkiller if needed."),
    ("constipation", "Eat more fiber, drink more water and stay active."),
    ("a bee sting", "Scrape out the sting, wash the area and apply a cold pack."),
    ("mild heartburn", "Eat smaller meals and avoid lying down right after eating."),
    ("a dry cough", "Drink warm fluids, try a spoonful of honey and rest your voice."),
)
SELF_CARE_QUESTIONS = (
    "What should I do about {s}?",
    "How can I treat {s} at home?",
    "Do you have any advice for {s}?",
)

CONDITIONS: tuple[tuple[str, str], ...] = (
    ("diabetes", "feeling very thirsty, passing urine often and feeling tired"),
    ("the flu", "a sudden fever, body aches and tiredness"),
    ("asthma", "wheezing, a tight chest and shortness of breath"),
    ("anemia", "tiredness, pale skin and shortness of breath"),
    ("a migraine", "a throbbing headache, nausea and sensitivity to light"),
    ("a urinary tract infection", "burning when passing urine and needing to go often"),
    ("pneumonia", "a cough, fever and difficulty breathing"),
    ("dehydration", "dark urine, thirst and dizziness"),
    ("an underactive thyroid", "tiredness, weight gain and feeling cold"),
    ("food poisoning", "nausea, vomiting and diarrhea"),
    ("appendicitis", "pain that moves to the lower right side of the belly"),
    ("a stroke", "a drooping face, arm weakness and slurred speech"),
)
CONDITION_QUESTIONS = (
    "What are the common signs of {c}?",
    "How can I tell if I have {c}?",
    "What symptoms does {c} cause?",
)
CONDITION_ANSWER = "Common signs of {c} include {x}."

TEXT_QA_INSTRUCTIONS = (
    "Answer the patient's question in one sentence.",
    "Answer the following health question briefly.",
    "You are a helpful medical assistant. Answer the question.",
    "Reply to the patient with a short, clear answer.",
)
SPEECH_QA_INSTRUCTIONS = (
    "Listen to the patient's spoken question and answer it in one sentence.",
    "Answer the question in the audio briefly.",
)

_NUMBER_RE = re.compile(r"\d")
_NOT_WORD_RE = re.compile(r"[^a-z' ]+")
_SPACES_RE = re.compile(r"\s+")


def normalize_transcript(text: str) -> str:
    """The transcript convention of this set: lowercase, punctuation removed except apostrophes (hyphens become
    spaces), single spaces, no digits (numbers are written as words in the source text).

    Raises:
        ValueError: ``text`` contains a digit.
    """
    if _NUMBER_RE.search(text):
        raise ValueError(f"write numbers as words: {text!r}")
    lowered = text.lower().replace("-", " ").replace("\u2019", "'")
    return _SPACES_RE.sub(" ", _NOT_WORD_RE.sub(" ", lowered)).strip()


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


# ----------------------------------------------------------------------------------------- building rows


@dataclass(frozen=True)
class Clip:
    """One audio file to synthesise."""

    name: str  # file name under audio/
    text: str  # what espeak-ng speaks (with punctuation, for prosody)
    voice: str
    rate: int


@dataclass(frozen=True)
class QA:
    """One question/answer pair; ``fact`` identifies the answer independent of the question's phrasing."""

    fact: str
    question: str
    answer: str


def asr_sentences(rng: random.Random) -> list[str]:
    """All ASR sentences: a seeded sample of each template's slot combinations plus the fixed ones, deduplicated."""
    out: list[str] = []
    for template, slots, keep in ASR_TEMPLATES:
        combos = [template.format(*combo) for combo in itertools.product(*slots)]
        out.extend(rng.sample(combos, keep))
    out.extend(FIXED_SENTENCES)
    seen: set[str] = set()
    unique = []
    for sentence in out:
        key = normalize_transcript(sentence)
        n_words = len(key.split())
        if not ASR_MIN_WORDS <= n_words <= ASR_MAX_WORDS:
            raise ValueError(f"{sentence!r}: {n_words} words, expected {ASR_MIN_WORDS}-{ASR_MAX_WORDS}")
        if key not in seen:
            seen.add(key)
            unique.append(sentence)
    return unique


def qa_pool() -> list[QA]:
    """Every (fact, question phrasing) pair."""
    pool: list[QA] = []
    for s, d in DEPARTMENTS:
        pool += [QA(f"dept:{s}", q.format(s=s), DEPARTMENT_ANSWER.format(s=s, d=d)) for q in DEPARTMENT_QUESTIONS]
    for d, verb, use, how in DRUGS:
        pool += [QA(f"use:{d}", q.format(d=d), DRUG_USE_ANSWER.format(D=_capitalise(d), u=use))
                 for q in DRUG_USE_QUESTIONS]
        pool += [QA(f"how:{d}", q.format(d=d, v=verb), how) for q in DRUG_HOW_QUESTIONS]
    for s, advice in SELF_CARE:
        pool += [QA(f"care:{s}", q.format(s=s), advice) for q in SELF_CARE_QUESTIONS]
    for c, signs in CONDITIONS:
        pool += [QA(f"signs:{c}", q.format(c=c), CONDITION_ANSWER.format(c=c, x=signs)) for q in CONDITION_QUESTIONS]
    return pool


def split_qa(rng: random.Random) -> tuple[list[QA], list[QA], list[QA], list[QA]]:
    """(text train, text val, speech train, speech val).

    Validation takes at most one phrasing of a fact; text train covers every fact with another phrasing, so a
    validation question is a new (phrasing, subject) combination whose answer pattern was seen in training.
    Speech train may reuse text-train questions (another modality); no validation question occurs in any train set.
    """
    pool = qa_pool()
    rng.shuffle(pool)
    n_val = N_TEXT_QA_VAL + N_SPEECH_QA_VAL
    val: list[QA] = []
    val_facts: set[str] = set()
    for qa in pool:
        if len(val) < n_val and qa.fact not in val_facts:
            val.append(qa)
            val_facts.add(qa.fact)
    val_ids = {id(qa) for qa in val}
    rest = [qa for qa in pool if id(qa) not in val_ids]
    covered: set[str] = set()
    text_train: list[QA] = []
    for qa in rest:  # one phrasing of every fact first
        if qa.fact not in covered:
            covered.add(qa.fact)
            text_train.append(qa)
    chosen = {id(qa) for qa in text_train}
    text_train += [qa for qa in rest if id(qa) not in chosen][: N_TEXT_QA_TRAIN - len(text_train)]
    rng.shuffle(text_train)
    speech_train = rng.sample(rest, N_SPEECH_QA_TRAIN)
    return text_train, val[:N_TEXT_QA_VAL], speech_train, val[N_TEXT_QA_VAL:]


def text_qa_rows(items: list[QA], rng: random.Random) -> list[dict[str, str]]:
    """Every fifth row carries the question in ``instruction`` with an empty ``input`` (both layouts occur)."""
    rows = []
    for i, qa in enumerate(items):
        if i % 5 == 4:
            rows.append({"instruction": qa.question, "input": "", "output": qa.answer})
        else:
            rows.append({"instruction": rng.choice(TEXT_QA_INSTRUCTIONS), "input": qa.question, "output": qa.answer})
    return rows


def _voice_for(i: int, held_out: bool, rng: random.Random) -> str:
    """Train rows: a train voice. Validation rows: 3 of every 5 a held-out voice (alternating), else a train one."""
    if held_out and i % 5 < 3:
        return HELDOUT_VOICES[(i % 5) % len(HELDOUT_VOICES)]
    return rng.choice(TRAIN_VOICES)


def build_plan(seed: int) -> tuple[dict[str, list[dict[str, Any]]], list[Clip]]:
    """Every JSONL file's rows (keyed by file name) and the clips to synthesise; pure Python, no espeak-ng.

    ASR rows carry the extra keys ``voice`` and ``rate``; speech QA rows ``question``, ``voice`` and ``rate``
    (record readers keep unknown keys).
    """
    rng = random.Random(seed)
    sentences = asr_sentences(rng)
    rng.shuffle(sentences)
    asr_val, asr_train = sentences[:N_ASR_VAL], sentences[N_ASR_VAL:]
    text_train, text_val, speech_train, speech_val = split_qa(rng)

    files: dict[str, list[dict[str, Any]]] = {}
    clips: list[Clip] = []
    n_asr = 0
    for split, items, held_out in (("train", asr_train, False), ("val", asr_val, True)):
        rows = []
        for i, sentence in enumerate(items):
            clip = Clip(f"asr_{n_asr:03d}.ogg", sentence, _voice_for(i, held_out, rng), rng.choice(RATES))
            n_asr += 1
            clips.append(clip)
            rows.append({"audio_path": f"audio/{clip.name}", "transcript": normalize_transcript(sentence),
                         "language": "en", "voice": clip.voice, "rate": clip.rate})
        files[f"asr_{split}.jsonl"] = rows
    files["text_qa_train.jsonl"] = text_qa_rows(text_train, rng)
    files["text_qa_val.jsonl"] = text_qa_rows(text_val, rng)
    n_sqa = 0
    for split, items, held_out in (("train", speech_train, False), ("val", speech_val, True)):
        rows = []
        for i, qa in enumerate(items):
            clip = Clip(f"sqa_{n_sqa:03d}.ogg", qa.question, _voice_for(i, held_out, rng), rng.choice(RATES))
            n_sqa += 1
            clips.append(clip)
            rows.append({"instruction": rng.choice(SPEECH_QA_INSTRUCTIONS), "input": "",
                         "audio_path": f"audio/{clip.name}", "output": qa.answer, "question": qa.question,
                         "voice": clip.voice, "rate": clip.rate})
        files[f"speech_qa_{split}.jsonl"] = rows
    return files, clips


# ----------------------------------------------------------------------------------------- audio


def require_espeak() -> str:
    """The espeak-ng version line; exits with a clear message when the binary is missing."""
    if shutil.which("espeak-ng") is None:
        sys.exit("make_mini_en_sample: the 'espeak-ng' binary is not on PATH; install it with "
                 "`apt-get install -y espeak-ng` (only needed to regenerate data/mini_en/)")
    out = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True).stdout
    return out.split("Data at")[0].replace("eSpeak NG text-to-speech:", "").strip()


def _resample(wave: np.ndarray) -> np.ndarray:
    try:
        from scipy.signal import resample_poly
    except ImportError:  # pragma: no cover - scipy comes with the venv's scientific stack
        sys.exit("make_mini_en_sample: needs scipy (scipy.signal.resample_poly) to resample 22.05 kHz to 16 kHz")
    return resample_poly(wave, 320, 441).astype(np.float32)  # 16000 / 22050 = 320 / 441


def _trim(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    loud = np.flatnonzero(np.abs(wave) > TRIM_THRESHOLD * max(float(np.abs(wave).max()), 1e-9))
    if loud.size == 0:
        raise RuntimeError("espeak-ng produced silence")
    margin = int(0.02 * sample_rate)
    return wave[max(0, loud[0] - margin): loud[-1] + margin + 1]


_CRC_TABLE: list[int] = []


def _ogg_crc(data: bytes) -> int:
    if not _CRC_TABLE:
        for i in range(256):
            r = i << 24
            for _ in range(8):
                r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
            _CRC_TABLE.append(r & 0xFFFFFFFF)
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc


def fix_ogg_serial(data: bytes, serial: int) -> bytes:
    """Set every Ogg page's stream serial number to ``serial`` and recompute the page checksums."""
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos:pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_segments = out[pos + 26]
        length = 27 + n_segments + sum(out[pos + 27: pos + 27 + n_segments])
        out[pos + 14: pos + 18] = struct.pack("<I", serial)
        out[pos + 22: pos + 26] = b"\0\0\0\0"
        out[pos + 22: pos + 26] = struct.pack("<I", _ogg_crc(bytes(out[pos: pos + length])))
        pos += length
    return bytes(out)


def ogg_opus_vendor(data: bytes) -> str:
    """The encoder's vendor string from an Ogg Opus file's OpusTags header (e.g. ``libopus 1.4``)."""
    pos = data.find(b"OpusTags")
    if pos < 0:
        raise ValueError("no OpusTags header")
    (length,) = struct.unpack("<I", data[pos + 8: pos + 12])
    return data[pos + 12: pos + 12 + length].decode("utf-8", "replace")


def synthesize(clip: Clip, audio_dir: Path, work_dir: Path) -> float:
    """Speak ``clip`` and write ``audio_dir/clip.name`` as 16 kHz mono OGG Opus; returns its duration (s)."""
    raw = work_dir / f"{Path(clip.name).stem}.wav"
    subprocess.run(["espeak-ng", "-v", clip.voice, "-s", str(clip.rate), "-w", str(raw), clip.text],
                   check=True, capture_output=True)
    wave, sr = soundfile.read(str(raw), dtype="float32", always_2d=True)
    raw.unlink()
    if sr != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng wrote {sr} Hz, expected {ESPEAK_RATE}")
    wave = _resample(_trim(wave.mean(axis=1), sr))
    wave *= PEAK / max(float(np.abs(wave).max()), 1e-9)
    pad = np.zeros(int(PAD_SECONDS * SAMPLE_RATE), dtype=np.float32)
    wave = np.concatenate([pad, wave, pad])
    duration = len(wave) / SAMPLE_RATE
    if not MIN_SECONDS <= duration <= MAX_SECONDS:
        raise RuntimeError(f"{clip.name}: {duration:.2f} s, outside {MIN_SECONDS}-{MAX_SECONDS} s ({clip.text!r})")
    tmp = work_dir / clip.name
    soundfile.write(str(tmp), wave, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=OPUS_COMPRESSION)
    serial = zlib.crc32(clip.name.encode()) & 0x7FFFFFFF
    (audio_dir / clip.name).write_bytes(fix_ogg_serial(tmp.read_bytes(), serial))
    tmp.unlink()
    return duration


# ----------------------------------------------------------------------------------------- output


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _fmt_voices(voices: tuple[str, ...]) -> str:
    return ", ".join(f"`{v}`" for v in voices)


def write_readme(out: Path, files: dict[str, list[dict[str, Any]]], durations: dict[str, float],
                 espeak_version: str, seed: int) -> None:
    n = {name: len(rows) for name, rows in files.items()}
    asr_secs = sum(durations[Path(r["audio_path"]).name] for k in ("asr_train.jsonl", "asr_val.jsonl")
                   for r in files[k])
    sqa_secs = sum(durations[Path(r["audio_path"]).name] for k in ("speech_qa_train.jsonl", "speech_qa_val.jsonl")
                   for r in files[k])
    lo, hi = min(durations.values()), max(durations.values())
    audio_bytes = sum(p.stat().st_size for p in (out / "audio").glob("*.ogg"))
    jsonl_bytes = sum(p.stat().st_size for p in out.glob("*.jsonl"))
    seed_arg = "" if seed == DEFAULT_SEED else f" --seed {seed}"
    held_out = "a voice" if len(HELDOUT_VOICES) == 1 else f"{len(HELDOUT_VOICES)} voices"
    held_out_noun = "voice" if len(HELDOUT_VOICES) == 1 else "voices"
    opus_vendor = ogg_opus_vendor((out / "audio" / sorted(durations)[0]).read_bytes())
    text = f"""# Mini English medical sample (synthetic speech + text)

A small, limited-domain English medical data set that real pretrained models (Whisper base,
SmolLM2-135M-Instruct) can learn from in a few minutes: short patient and clinician sentences
for ASR, one-sentence health QA as text, and the same QA with a spoken question. Validation
holds out sentences, question phrasings and {held_out}, so it is not a memorisation test.
**It is not medical advice**: the answers are short general statements written for this sample.

| File | Kind | Rows | Content |
|---|---|---|---|
| `asr_train.jsonl` / `asr_val.jsonl` | `asr` | {n['asr_train.jsonl']} / {n['asr_val.jsonl']} | `{{audio_path, transcript, language: "en", voice, rate}}`: 3-12 word complaints, medication instructions, allergies, results, clinician requests. Validation sentences never occur in train. |
| `text_qa_train.jsonl` / `text_qa_val.jsonl` | `text_qa` | {n['text_qa_train.jsonl']} / {n['text_qa_val.jsonl']} | `{{instruction, input, output}}`: symptom -> which clinic, drug -> what it is for / how to take it, self-care advice, signs of a condition; one-sentence answers. Every fifth row puts the question in `instruction` with an empty `input`. |
| `speech_qa_train.jsonl` / `speech_qa_val.jsonl` | `speech_qa` | {n['speech_qa_train.jsonl']} / {n['speech_qa_val.jsonl']} | `{{instruction, input: "", audio_path, output, question, voice, rate}}`: the audio is the spoken question; `question` holds its text. |
| `audio/asr_NNN.ogg`, `audio/sqa_NNN.ogg` | | {len(durations)} clips | 16 kHz mono OGG Opus, {lo:.2f}-{hi:.2f} s each; {asr_secs / 60:.1f} min ASR + {sqa_secs / 60:.1f} min speech QA = {(asr_secs + sqa_secs) / 60:.1f} min in all. |

Size: {audio_bytes / 1e6:.2f} MB of audio + {jsonl_bytes / 1e3:.0f} kB of JSONL (cap: 4 MiB for the folder).
`audio_path` values are relative to this directory; `sllm_lib.data.records.read_records` resolves them
against the JSONL file's directory and keeps the extra keys (`voice`, `rate`, `question`) unchanged.

## Transcript convention (ASR)

Transcripts are normalised for English scoring: lowercase; no punctuation except apostrophes
(`i'm`, `don't`); hyphens become spaces; single spaces; numbers written as words
(`thirty eight point five`), never digits. Score hypotheses after the same normalisation
(`normalize_transcript` in the generator). The audio was spoken from the cased, punctuated
source sentence.

## Voices and speeds

- Train voices (espeak-ng `-v`): {_fmt_voices(TRAIN_VOICES)}.
- Held-out {held_out_noun}, only in validation rows (3 of every 5 validation clips): {_fmt_voices(HELDOUT_VOICES)}.
  The other validation clips use train voices speaking unseen sentences.
- Speeds (`-s`, words per minute): {", ".join(str(r) for r in RATES)}, drawn per clip.

Each row's `voice` and `rate` say how its clip was made.

The voices are espeak-ng's Klatt synthesiser variants because Whisper base, whose frozen encoder the
speech LLMs trained on this sample listen with, understands them best: {WHISPER_CHECK}

## QA splits

Every QA fact (a subject with its answer) has 3-4 question phrasings. Validation takes at most one
phrasing of a fact, and text train includes another phrasing of every fact: a validation question is a
new (phrasing, subject) combination of patterns seen in training, never a copy of a train question
(text or speech). Speech QA train may reuse text-train questions (different modality).

## Provenance, licence and regeneration

Everything is synthetic, with no real patient data. Text: the lists and templates in
`scripts/make_mini_en_sample.py`, sampled with seed `{seed}`. Audio: espeak-ng {espeak_version},
silence trimmed, resampled 22.05 -> 16 kHz (`scipy.signal.resample_poly`, 320/441), peak -3 dBFS,
{PAD_SECONDS:.2f} s padding, OGG Opus ({opus_vendor}) through soundfile (compression level {OPUS_COMPRESSION},
about 25 kbit/s VBR; decoded by libsndfile at 16 kHz with the exact sample count).
The generated files are dedicated to the public domain (CC0 1.0); espeak-ng's GPL covers the
program, not the speech it produces. The voice is robotic: scores on it say nothing about real speech.

```bash
apt-get install -y espeak-ng      # only to regenerate; tests read the committed files
.venv/bin/python scripts/make_mini_en_sample.py{seed_arg}
```

The output is byte-for-byte reproducible for the same espeak-ng, libsndfile/libopus and scipy
versions (fixed seed; each Ogg stream gets a fixed serial number). The script replaces
`audio/*.ogg`, the JSONL files and this README.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: data/mini_en)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng processes")
    args = parser.parse_args(argv)
    espeak_version = require_espeak()

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    files, clips = build_plan(args.seed)
    out: Path = args.out
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    for stale in audio_dir.glob("*.ogg"):
        stale.unlink()
    durations: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, Progress(
        TextColumn("synthesising"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as progress, ThreadPoolExecutor(max(1, args.jobs)) as pool:
        task = progress.add_task("clips", total=len(clips))
        for clip, seconds in zip(clips, pool.map(lambda c: synthesize(c, audio_dir, Path(tmp)), clips)):
            durations[clip.name] = seconds
            progress.advance(task)
    for name, rows in files.items():
        write_jsonl(out / name, rows)
    write_readme(out, files, durations, espeak_version, args.seed)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {len(clips)} clips, {sum(durations.values()) / 60:.1f} min audio, {size / 1e6:.2f} MB in all; "
          + ", ".join(f"{name} {len(rows)}" for name, rows in files.items()))
    if size > MAX_FOLDER_BYTES:
        print(f"warning: {size / 1e6:.2f} MB is over the {MAX_FOLDER_BYTES / 2**20:.0f} MiB cap", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
