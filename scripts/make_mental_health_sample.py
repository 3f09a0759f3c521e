"""Write the small synthetic Korean mental-health classification sample (data/sample/mental_health/).

Five tasks as in the seed project: emotion (7 classes), stress (binary), depression (binary), severity
(4 classes), suicidal ideation (binary). Sentences are composed from hand-written fragments per label, so the
files are deterministic, contain no real person's words, and are big enough to train and score a tiny model
end to end (not to judge a real one).

    python scripts/make_mental_health_sample.py [OUT_DIR]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "data" / "sample" / "mental_health"

OPENERS = ["요즘", "오늘은", "이번 주 내내", "최근 들어", "어제부터", "퇴근하고 나면"]

TASKS: dict[str, dict[str, list[str]]] = {
    "emotion": {
        "기쁨": ["합격 소식을 듣고 너무 행복했어요", "친구들과 웃으며 즐거운 시간을 보냈어요",
                "오랜만에 가족과 여행을 가서 신이 나요"],
        "슬픔": ["키우던 강아지가 떠나서 눈물이 나요", "혼자 남은 것 같아 마음이 아파요",
                "할머니 생각이 나서 계속 울었어요"],
        "분노": ["동료가 내 성과를 가로채서 화가 치밀어요", "약속을 또 어겨서 너무 짜증나고 화나요",
                "부당한 대우에 분해서 잠이 안 와요"],
        "불안": ["발표를 앞두고 가슴이 두근거리고 초조해요", "결과가 나쁠까 봐 계속 걱정돼요",
                "무슨 일이 생길 것 같아 마음이 불안해요"],
        "당황": ["회의에서 갑자기 질문을 받아 머리가 하얘졌어요", "실수로 메시지를 잘못 보내 당황했어요",
                "예상 못 한 말에 어쩔 줄을 몰랐어요"],
        "상처": ["믿었던 친구의 말에 마음이 상했어요", "무시당한 것 같아 서운하고 아파요",
                "가족이 내 노력을 몰라줘서 상처받았어요"],
        "중립": ["점심으로 김밥을 먹고 산책을 했어요", "평소처럼 출근해서 일을 했어요",
                "주말에 방 정리를 하고 장을 봤어요"],
    },
    "stress": {
        "있음": ["업무가 너무 많아 숨이 막히고 머리가 아파요", "마감에 쫓겨 잠을 제대로 못 자요",
                "시험 걱정에 어깨가 뭉치고 소화가 안 돼요"],
        "없음": ["일이 적당해서 여유롭게 지내고 있어요", "충분히 쉬어서 몸도 마음도 편안해요",
                "산책과 운동으로 기분 좋게 하루를 보내요"],
    },
    "depression": {
        "우울": ["아무것도 하고 싶지 않고 하루 종일 누워만 있어요", "즐겁던 일에도 흥미가 없고 공허해요",
                "내가 쓸모없는 사람처럼 느껴져요"],
        "정상": ["취미 생활을 즐기며 잘 지내고 있어요", "사람들을 만나면 기분이 좋아져요",
                "밥도 잘 먹고 잠도 잘 자요"],
    },
    "severity": {
        "정상": ["가끔 피곤하지만 일상생활에는 문제가 없어요", "기분이 대체로 안정적이에요",
                "걱정거리가 있어도 금방 털어내요"],
        "경도": ["며칠에 한 번씩 기분이 가라앉아요", "조금 무기력하지만 할 일은 해요",
                "잠들기까지 시간이 좀 걸려요"],
        "중등도": ["거의 매일 우울해서 일에 집중이 안 돼요", "식욕이 줄고 자주 잠에서 깨요",
                 "사람 만나는 것을 피하게 됐어요"],
        "고도": ["하루 종일 절망적이고 아무것도 할 수 없어요", "씻거나 먹는 것조차 힘들어요",
                "몇 주째 잠을 거의 못 자고 일을 그만뒀어요"],
    },
    "suicidal_ideation": {
        "있음": ["모든 걸 끝내고 싶다는 생각이 자꾸 들어요", "사라져 버리면 편할 것 같아요",
                "살아야 할 이유를 모르겠어요"],
        "없음": ["힘들지만 내일은 나아질 거라고 생각해요", "도와주는 사람들이 있어서 버틸 수 있어요",
                "앞으로 하고 싶은 일이 많아요"],
    },
}


def rows(task: str, seed: int) -> list[dict[str, str]]:
    out = []
    for label, fragments in TASKS[task].items():
        for frag in fragments:
            for opener in OPENERS:
                out.append({"text": f"{opener} {frag}.", "label": label})
    random.Random(seed).shuffle(out)
    return out


def main(out_dir: Path = OUT) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, task in enumerate(TASKS):
        data = rows(task, seed=i)
        n_val = max(len(TASKS[task]) * 2, len(data) // 6)
        for split, part in (("val", data[:n_val]), ("train", data[n_val:])):
            path = out_dir / f"{task}_{split}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
            print(f"{path}: {len(part)} records")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
