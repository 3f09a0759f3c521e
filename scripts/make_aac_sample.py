"""Write the small synthetic AAC (augmentative and alternative communication) card sample (data/sample/aac/).

Each card is a 48x48 PNG drawn from simple shapes and colours (no real pictogram set is redistributed); each
record combines one or two cards with a persona and a context, and the target is the interpretation a caregiver
would give. Deterministic; for running the vision pipeline end to end, not for judging a model.

    python scripts/make_aac_sample.py [OUT_DIR]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "data" / "sample" / "aac"

# card name -> (shape, colour, meaning used in targets)
CARDS = {
    "water": ("circle", (40, 110, 220), "물"), "meal": ("rect", (240, 200, 80), "밥"),
    "toilet": ("triangle", (120, 120, 120), "화장실"), "pain": ("cross", (220, 40, 40), "아파요"),
    "sleep": ("moon", (60, 50, 140), "자고 싶어요"), "play": ("star", (60, 180, 90), "놀고 싶어요"),
    "mom": ("heart", (230, 120, 170), "엄마"), "outside": ("tree", (30, 140, 60), "밖에 나가요"),
}
PERSONAS = [{"나이": "7세", "성별": "남", "특성": "자폐 스펙트럼"}, {"나이": "12세", "성별": "여", "특성": "뇌병변"},
            {"나이": "68세", "성별": "남", "특성": "실어증(뇌졸중 후)"}, {"나이": "9세", "성별": "여", "특성": "발달 지연"}]
CONTEXTS = ["점심시간 교실에서", "병원 대기실에서", "저녁에 집 거실에서", "재활 치료가 끝난 뒤"]
PAIRS = [("water", None, "목이 말라서 물을 마시고 싶어요."), ("meal", None, "배가 고파서 밥을 먹고 싶어요."),
         ("toilet", None, "화장실에 가고 싶어요."), ("pain", None, "몸이 아파요. 도와주세요."),
         ("sleep", None, "피곤해서 자고 싶어요."), ("play", None, "놀이를 하고 싶어요."),
         ("mom", None, "엄마를 보고 싶어요."), ("outside", None, "밖에 나가고 싶어요."),
         ("pain", "mom", "아파서 엄마를 찾고 있어요."), ("water", "meal", "물과 밥을 먹고 싶어요."),
         ("outside", "play", "밖에 나가서 놀고 싶어요."), ("sleep", "mom", "엄마와 함께 자고 싶어요.")]


def draw(name: str, path: Path) -> None:
    from PIL import Image, ImageDraw

    shape, colour, _ = CARDS[name]
    img = Image.new("RGB", (48, 48), (250, 250, 245))
    d = ImageDraw.Draw(img)
    box = (8, 8, 40, 40)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "rect":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(24, 6), (42, 42), (6, 42)], fill=colour)
    elif shape == "cross":
        d.rectangle((20, 6, 28, 42), fill=colour)
        d.rectangle((6, 20, 42, 28), fill=colour)
    elif shape == "moon":
        d.ellipse(box, fill=colour)
        d.ellipse((16, 4, 46, 36), fill=(250, 250, 245))
    elif shape == "star":
        d.polygon([(24, 4), (30, 18), (44, 18), (33, 28), (37, 44), (24, 34), (11, 44), (15, 28), (4, 18), (18, 18)],
                  fill=colour)
    elif shape == "heart":
        d.ellipse((8, 10, 26, 28), fill=colour)
        d.ellipse((22, 10, 40, 28), fill=colour)
        d.polygon([(9, 22), (39, 22), (24, 42)], fill=colour)
    else:  # tree
        d.rectangle((21, 28, 27, 44), fill=(120, 80, 40))
        d.ellipse((10, 4, 38, 32), fill=colour)
    img.save(path, format="PNG")


def main(out: Path = OUT) -> None:
    (out / "cards").mkdir(parents=True, exist_ok=True)
    for name in CARDS:
        draw(name, out / "cards" / f"{name}.png")
    rows = []
    for i, (a, b, target) in enumerate(PAIRS):
        for j, (persona, context) in enumerate(zip(PERSONAS, CONTEXTS)):
            images = [f"cards/{a}.png"] + ([f"cards/{b}.png"] if b else [])
            rows.append({"images": images, "persona": persona, "context": context, "output": target})
    random.Random(0).shuffle(rows)
    n_val = 8
    for split, part in (("val", rows[:n_val]), ("train", rows[n_val:])):
        path = out / f"aac_{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
        print(f"{path}: {len(part)} records")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
