#!/usr/bin/env python3
"""Generate the small synthetic Korean medical sample data set under data/sample/.

Everything is synthetic: the text is written from fixed lists below and the audio is
spoken by espeak-ng (Korean voice), converted by sox to 16 kHz mono 16-bit PCM WAV.
The output is deterministic for a given espeak-ng/sox version (fixed seed, no dither).

Usage:
    python scripts/make_sample_data.py [--out data/sample] [--seed 20240601]

Requires the ``espeak-ng`` and ``sox`` command-line tools.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import soundfile

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "data" / "sample"
DEFAULT_SEED = 20240601

SAMPLE_RATE = 16_000
ESPEAK_VOICE = "ko"
ESPEAK_SPEED = 170
MIN_SECONDS = 1.5
MAX_SECONDS = 4.0
PAD_SECONDS = 0.15
MAX_TOTAL_AUDIO_BYTES = 8 * 1024 * 1024

N_TEXT_QA_TRAIN = 64
N_ASR_TRAIN = 32
N_SPEECH_QA_TRAIN = 16


@dataclass(frozen=True)
class Condition:
    """One condition with a short answer per question type."""

    name: str
    diet: str
    symptoms: str
    visit: str
    care: str


CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "고혈압",
        "짠 음식, 가공육, 젓갈처럼 나트륨이 많은 음식과 과음을 피하세요. 하루 소금 섭취는 5g 이하로 줄이는 것이 좋습니다.",
        "대부분 뚜렷한 증상이 없어 '침묵의 살인자'라고 불립니다. 혈압이 매우 높으면 두통, 어지럼증, 뒷목 당김이 나타날 수 있습니다.",
        "집에서 잰 혈압이 반복해서 140/90 mmHg 이상이면 진료를 받으세요. 180/120 mmHg 이상이면서 가슴 통증이나 심한 두통이 있으면 즉시 응급실에 가야 합니다.",
        "정상 혈압은 120/80 mmHg 미만입니다. 저염식, 규칙적인 유산소 운동, 체중 감량과 꾸준한 약 복용으로 관리합니다.",
    ),
    Condition(
        "당뇨병",
        "흰쌀밥, 흰빵, 단 음료, 과자처럼 혈당을 빠르게 올리는 음식을 줄이세요. 잡곡과 채소, 단백질 위주로 규칙적으로 드시는 것이 좋습니다.",
        "물을 많이 마시고 소변을 자주 보며, 체중이 줄고 쉽게 피로해지는 것이 대표적인 증상입니다.",
        "공복 혈당이 126 mg/dL 이상이거나 당화혈색소가 6.5% 이상이면 당뇨병에 해당하므로 진료를 받으세요.",
        "식사 조절과 하루 30분 이상의 운동, 정기적인 혈당 측정, 처방된 약을 거르지 않는 것이 중요합니다.",
    ),
    Condition(
        "위염",
        "맵고 짠 음식, 커피, 술, 기름진 음식은 위 점막을 자극하므로 피하세요.",
        "명치 부위가 쓰리거나 아프고, 속이 더부룩하며 메스꺼움과 식욕 저하가 나타납니다.",
        "검은색 변을 보거나 피를 토하면 위출혈일 수 있으니 즉시 병원에 가야 합니다. 증상이 2주 이상 지속되면 내시경 검사를 받아 보세요.",
        "식사를 규칙적으로 천천히 하고, 야식과 과식을 피하며, 진통소염제는 의사와 상의한 뒤 복용하세요.",
    ),
    Condition(
        "감기",
        "술과 카페인 음료는 피하고, 따뜻한 물과 소화가 잘 되는 음식을 드세요.",
        "콧물, 코막힘, 인후통, 기침, 미열이 주로 나타나며 보통 7일에서 10일 안에 좋아집니다.",
        "체온이 38.5도 이상으로 3일 넘게 지속되거나 숨이 차면 폐렴일 수 있으니 진료를 받으세요.",
        "충분히 쉬고 수분을 섭취하세요. 감기는 바이러스 감염이라 대부분 항생제가 필요하지 않습니다.",
    ),
    Condition(
        "독감",
        "술은 피하고, 죽이나 수프처럼 부드러운 음식과 충분한 수분을 섭취하세요.",
        "갑자기 38도 이상의 고열, 오한, 심한 근육통과 두통이 나타나는 것이 감기와 다른 점입니다.",
        "증상이 시작되고 48시간 안에 진료를 받으면 항바이러스제 효과가 좋습니다. 숨이 차거나 의식이 흐려지면 즉시 응급실에 가세요.",
        "매년 가을 예방접종을 받고 손을 자주 씻으며, 열이 내린 뒤 하루 이상 지나서 등교나 출근하세요.",
    ),
    Condition(
        "천식",
        "찬 음료, 아황산염이 든 가공식품, 알레르기를 일으키는 음식을 피하는 것이 좋습니다.",
        "숨 쉴 때 쌕쌕거리는 소리, 호흡곤란, 가슴 답답함, 밤이나 새벽에 심해지는 기침이 특징입니다.",
        "흡입기를 써도 숨찬 증상이 나아지지 않거나 말을 잇기 어려울 정도면 즉시 응급실에 가야 합니다.",
        "처방받은 흡입 스테로이드를 매일 사용하고, 담배 연기, 미세먼지, 집먼지진드기 같은 유발 요인을 피하세요.",
    ),
    Condition(
        "골다공증",
        "짠 음식, 과도한 카페인, 탄산음료, 술은 칼슘 흡수를 방해하므로 줄이세요.",
        "골절이 생기기 전까지 증상이 거의 없으며, 키가 줄거나 허리가 굽으면서 발견되기도 합니다.",
        "65세 이상 여성과 70세 이상 남성은 증상이 없어도 골밀도 검사를 받으세요. T-점수가 -2.5 이하이면 골다공증입니다.",
        "칼슘과 비타민 D를 충분히 섭취하고, 걷기와 근력 운동을 꾸준히 하며, 낙상을 예방하세요.",
    ),
    Condition(
        "위식도 역류질환",
        "기름진 음식, 초콜릿, 커피, 술, 탄산음료는 역류를 악화시키므로 피하세요.",
        "가슴 쓰림과 신물이 올라오는 느낌이 대표적이며, 만성 기침이나 목의 이물감이 생기기도 합니다.",
        "음식을 삼키기 어렵거나 체중이 이유 없이 줄면 내시경 검사를 받아야 합니다.",
        "식후 3시간 안에는 눕지 말고, 잘 때 상체를 높이며, 과식을 피하세요.",
    ),
    Condition(
        "통풍",
        "맥주 같은 술, 내장류, 등푸른 생선, 과당이 많은 음료처럼 퓨린이나 요산을 늘리는 음식을 피하세요.",
        "엄지발가락 관절이 갑자기 붉게 붓고 극심하게 아픈 것이 전형적인 증상입니다.",
        "관절이 갑자기 붓고 열이 나면 감염성 관절염과 구별해야 하므로 바로 진료를 받으세요. 혈중 요산이 7.0 mg/dL을 넘으면 고요산혈증입니다.",
        "물을 하루 2리터 이상 마시고, 체중을 줄이며, 처방받은 요산 강하제를 꾸준히 복용하세요.",
    ),
    Condition(
        "아토피 피부염",
        "검사로 확인된 알레르기 음식만 피하면 되며, 근거 없이 음식을 지나치게 제한하지 않는 것이 좋습니다.",
        "심한 가려움과 건조한 피부, 팔다리가 접히는 부위의 습진이 특징입니다.",
        "진물이 나거나 노란 딱지가 생기면 세균 감염일 수 있으니 진료를 받으세요.",
        "목욕 후 3분 안에 보습제를 바르고, 미지근한 물로 짧게 씻으며, 면 소재 옷을 입으세요.",
    ),
    Condition(
        "편두통",
        "숙성 치즈, 가공육, 적포도주, 과도한 카페인은 편두통을 유발할 수 있으니 주의하세요.",
        "머리 한쪽이 욱신거리며 아프고, 메스꺼움과 빛이나 소리에 예민해지는 증상이 함께 나타납니다.",
        "갑자기 평생 가장 심한 두통이 생기거나 마비, 말 어눌함이 함께 나타나면 즉시 응급실에 가야 합니다.",
        "규칙적으로 자고 식사하며 두통 일기로 유발 요인을 찾고, 진통제는 한 달에 10일 넘게 복용하지 마세요.",
    ),
    Condition(
        "철결핍성 빈혈",
        "식사 직후 녹차나 커피를 마시면 철분 흡수가 줄어드니 식후 1~2시간 뒤에 드세요.",
        "쉽게 피로하고 어지러우며, 얼굴이 창백하고 조금만 움직여도 숨이 찹니다.",
        "혈색소가 성인 남성은 13 g/dL, 여성은 12 g/dL 미만이면 빈혈이므로 원인을 찾기 위해 진료를 받으세요.",
        "붉은 살코기, 간, 시금치처럼 철분이 많은 음식을 먹고, 철분제는 비타민 C와 함께 복용하면 흡수가 잘 됩니다.",
    ),
    Condition(
        "고지혈증",
        "삼겹살, 버터, 튀김처럼 포화지방과 트랜스지방이 많은 음식을 줄이세요.",
        "대부분 증상이 없어 건강검진 혈액검사에서 발견됩니다.",
        "LDL 콜레스테롤이 160 mg/dL 이상이면 의사와 치료 여부를 상의하세요.",
        "채소와 통곡물, 생선을 자주 먹고, 일주일에 150분 이상 운동하며, 담배를 끊으세요.",
    ),
    Condition(
        "장염",
        "우유, 기름진 음식, 매운 음식, 날음식은 설사를 악화시킬 수 있으니 회복될 때까지 피하세요.",
        "복통, 설사, 구토가 갑자기 시작되며 미열이 함께 나기도 합니다.",
        "혈변을 보거나 38.5도 이상 고열이 나거나 소변이 거의 나오지 않으면 탈수 위험이 있으니 병원에 가세요.",
        "경구 수액이나 이온 음료로 수분을 보충하고, 증상이 나아지면 죽처럼 부드러운 음식부터 드세요.",
    ),
    Condition(
        "방광염",
        "카페인, 술, 맵고 자극적인 음식은 방광을 자극하니 피하세요.",
        "소변 볼 때 따갑고, 자주 마렵고, 아랫배가 불편한 것이 대표적인 증상입니다.",
        "열이 나고 옆구리가 아프면 신우신염일 수 있으니 바로 진료를 받으세요.",
        "물을 충분히 마시고 소변을 오래 참지 말며, 처방받은 항생제는 끝까지 복용하세요.",
    ),
    Condition(
        "불면증",
        "오후 늦게 커피나 에너지 음료를 마시지 말고, 잠들기 전 술과 과식을 피하세요.",
        "잠들기 어렵거나 자주 깨고, 너무 일찍 깨서 낮 동안 피곤하고 집중하기 어렵습니다.",
        "잠 문제가 일주일에 3번 이상, 3개월 넘게 계속되면 진료를 받아 보세요.",
        "매일 같은 시간에 일어나고, 침대에서는 잠만 자며, 잠들기 1시간 전부터 스마트폰을 멀리하세요.",
    ),
    Condition(
        "퇴행성 관절염",
        "체중을 늘리는 고열량 음식과 단 음식을 줄이면 무릎에 가는 부담을 덜 수 있습니다.",
        "움직일 때 관절이 아프고, 아침에 뻣뻣함이 30분 이내로 있다가 풀리는 것이 특징입니다.",
        "관절이 붉게 붓고 열이 나거나 통증 때문에 걷기 어려우면 진료를 받으세요.",
        "체중을 줄이고, 수영이나 실내 자전거처럼 관절에 부담이 적은 운동으로 근력을 기르세요.",
    ),
    Condition(
        "갑상선기능저하증",
        "갑상선 호르몬제는 아침 공복에 복용하고, 칼슘제나 철분제와는 4시간 정도 간격을 두세요.",
        "피로, 추위를 많이 타는 것, 체중 증가, 변비, 피부 건조가 흔한 증상입니다.",
        "이유 없이 피곤하고 체중이 늘면 갑상선 기능 혈액검사를 받아 보세요.",
        "호르몬제를 매일 같은 시간에 복용하고, 6개월에서 1년마다 혈액검사로 용량을 확인하세요.",
    ),
    Condition(
        "대상포진",
        "특별히 피해야 할 음식은 없지만 술은 회복을 늦출 수 있으니 피하고 골고루 드세요.",
        "몸 한쪽에 띠 모양으로 물집이 생기고 찌르는 듯한 통증이 나타납니다.",
        "발진이 생기고 72시간 안에 항바이러스제를 시작해야 효과가 좋습니다. 눈 주위에 생기면 바로 안과 진료를 받으세요.",
        "50세 이상은 예방접종을 고려하고, 물집을 터뜨리지 말고 깨끗하게 유지하세요.",
    ),
    Condition(
        "알레르기 비염",
        "찬 음식과 술은 코막힘을 악화시킬 수 있으니 줄이고, 알레르기가 확인된 음식은 피하세요.",
        "맑은 콧물, 재채기, 코막힘, 코와 눈의 가려움이 반복됩니다.",
        "코막힘으로 잠을 설치거나 누런 콧물과 얼굴 통증이 10일 넘게 계속되면 진료를 받으세요.",
        "실내 습도를 40~60%로 유지하고, 침구를 자주 세탁하며, 식염수로 코를 세척하세요.",
    ),
)

QUESTION_TEMPLATES: dict[str, str] = {
    "diet": "{name} 환자가 식사할 때 주의할 점은 무엇인가요?",
    "symptoms": "{name}의 주요 증상은 무엇인가요?",
    "visit": "{name}의 경우 언제 병원에 가야 하나요?",
    "care": "{name} 환자는 평소에 어떻게 관리해야 하나요?",
}

TEXT_QA_INSTRUCTIONS: tuple[str, ...] = (
    "다음 질문에 답하세요.",
    "환자의 질문에 정확하고 친절하게 답변하세요.",
    "의료 상담가로서 다음 질문에 간단히 답하세요.",
    "다음 건강 질문에 한두 문장으로 답하세요.",
)

ASR_SENTENCES: tuple[str, ...] = (
    "머리가 아프고 어지러워요.",
    "어제부터 목이 많이 아파요.",
    "기침이 멈추지 않아요.",
    "배가 아프고 설사를 해요.",
    "혈압약을 매일 먹고 있어요.",
    "밤에 잠을 잘 못 자요.",
    "가슴이 답답하고 숨이 차요.",
    "무릎이 붓고 아파요.",
    "열이 나고 온몸이 쑤셔요.",
    "콧물과 재채기가 심해요.",
    "소변 볼 때 따가워요.",
    "식후에 속이 쓰려요.",
    "피부가 가렵고 건조해요.",
    "허리가 아파서 걷기 힘들어요.",
    "당뇨 검사를 받고 싶어요.",
    "약을 먹고 두드러기가 났어요.",
    "눈이 충혈되고 가려워요.",
    "귀에서 소리가 들려요.",
    "손발이 자주 저려요.",
    "요즘 쉽게 피곤해요.",
    "입맛이 없고 체중이 줄었어요.",
    "아이가 밤새 열이 났어요.",
    "계단을 오르면 숨이 차요.",
    "발목을 삐어서 부었어요.",
    "구토가 나고 메스꺼워요.",
    "변비가 일주일째 계속돼요.",
    "가슴이 두근거려요.",
    "얼굴이 붓고 소변이 줄었어요.",
    "독감 예방접종을 하고 싶어요.",
    "혈당이 높다고 들었어요.",
    "처방전을 다시 받고 싶어요.",
    "어깨가 결리고 팔이 저려요.",
    "잇몸에서 피가 나요.",
    "목에 뭔가 걸린 느낌이에요.",
    "알레르기 약이 있나요?",
    "이 약은 식후에 드세요.",
    "하루 세 번 복용하세요.",
    "혈압을 재 보겠습니다.",
    "숨을 크게 들이쉬세요.",
    "검사 결과는 다음 주에 나옵니다.",
)

SPEECH_QA_PAIRS: tuple[tuple[str, str], ...] = (
    ("열이 나면 어떻게 해야 하나요?",
     "미지근한 물로 몸을 닦고 수분을 충분히 섭취하세요. 38.5도 이상이 계속되면 해열제를 복용하고 진료를 받으세요."),
    ("혈압은 얼마가 정상인가요?",
     "정상 혈압은 120/80 mmHg 미만입니다. 140/90 mmHg 이상이 반복되면 고혈압을 의심합니다."),
    ("감기에 항생제가 필요한가요?",
     "감기는 대부분 바이러스가 원인이라 항생제가 필요하지 않습니다. 세균 감염이 의심될 때만 의사가 처방합니다."),
    ("당뇨에 좋은 음식은 뭔가요?",
     "잡곡밥, 채소, 두부와 생선처럼 혈당을 천천히 올리는 음식이 좋습니다. 단 음료와 과자는 줄이세요."),
    ("잠이 안 올 때 어떻게 하나요?",
     "매일 같은 시간에 일어나고 잠들기 전 스마트폰과 카페인을 피하세요. 3개월 넘게 계속되면 진료를 받아 보세요."),
    ("두통약은 자주 먹어도 되나요?",
     "진통제를 한 달에 10일 넘게 복용하면 약물 과용 두통이 생길 수 있습니다. 두통이 잦다면 의사와 상의하세요."),
    ("속이 쓰릴 때 뭘 피해야 하나요?",
     "커피, 술, 맵고 기름진 음식을 피하고 식후 바로 눕지 마세요."),
    ("독감 주사는 언제 맞나요?",
     "매년 10월에서 11월 사이, 유행이 시작되기 전에 맞는 것이 좋습니다."),
    ("설사할 때 뭘 먹어야 하나요?",
     "이온 음료나 경구 수액으로 수분을 보충하고, 죽처럼 부드러운 음식부터 드세요."),
    ("허리 통증에 좋은 운동이 있나요?",
     "걷기와 코어 근육 강화 운동이 도움이 됩니다. 다리가 저리거나 힘이 빠지면 진료를 받으세요."),
    ("콜레스테롤은 어떻게 낮추나요?",
     "포화지방을 줄이고 채소와 생선을 자주 드세요. 일주일에 150분 이상 운동하면 도움이 됩니다."),
    ("어지러울 때 어떻게 하나요?",
     "먼저 앉거나 누워서 넘어지지 않게 하세요. 말이 어눌하거나 팔다리에 힘이 빠지면 즉시 119에 연락하세요."),
    ("비타민 디는 왜 필요한가요?",
     "비타민 D는 칼슘 흡수를 도와 뼈를 튼튼하게 합니다. 하루 15분 정도 햇볕을 쬐는 것도 도움이 됩니다."),
    ("아이 열이 몇 도면 병원에 가나요?",
     "생후 3개월 미만 아기가 38도 이상이면 바로 병원에 가세요. 큰 아이도 38.5도 이상 고열이 이틀 넘게 계속되면 진료를 받으세요."),
    ("금연하면 언제부터 좋아지나요?",
     "금연하고 20분이면 혈압과 맥박이 내려가고, 1년이 지나면 심장병 위험이 절반 가까이 줄어듭니다."),
    ("물은 하루에 얼마나 마시나요?",
     "건강한 성인은 하루 1.5에서 2리터 정도가 적당합니다. 심부전이나 신장병이 있으면 의사의 지시를 따르세요."),
    ("변비에 좋은 음식은 뭔가요?",
     "채소, 과일, 잡곡처럼 식이섬유가 많은 음식과 충분한 물이 도움이 됩니다."),
    ("가슴이 아프면 어떻게 하나요?",
     "가슴을 조이는 통증이 5분 넘게 계속되면 심근경색일 수 있으니 즉시 119에 연락하세요."),
    ("약 먹는 걸 깜빡하면 어떡하죠?",
     "생각났을 때 바로 복용하되, 다음 복용 시간이 가까우면 건너뛰세요. 두 번 분량을 한꺼번에 먹지 마세요."),
    ("무릎 찜질은 어떻게 하나요?",
     "갑자기 붓고 아플 때는 냉찜질을, 오래된 통증에는 온찜질을 하는 것이 좋습니다."),
    ("눈이 건조할 때 어떻게 하나요?",
     "인공눈물을 사용하고 화면을 볼 때 자주 눈을 깜빡이세요. 실내가 건조하지 않게 가습기를 쓰는 것도 좋습니다."),
    ("빈혈에 좋은 음식이 있나요?",
     "붉은 살코기, 간, 시금치처럼 철분이 많은 음식이 좋고, 비타민 C와 함께 먹으면 흡수가 잘 됩니다."),
    ("예방접종 후에 열이 나요.",
     "접종 후 하루 이틀 미열은 흔한 반응입니다. 39도 이상 고열이나 호흡곤란이 있으면 진료를 받으세요."),
    ("혈당은 언제 재야 하나요?",
     "아침 공복과 식후 2시간에 재는 것이 일반적입니다. 공복 혈당이 126 mg/dL 이상이면 의사와 상의하세요."),
)

SPEECH_QA_INSTRUCTIONS: tuple[str, ...] = (
    "음성으로 들은 환자의 질문에 답하세요.",
    "오디오 속 질문을 듣고 한두 문장으로 답변하세요.",
)


def build_text_qa(rng: random.Random) -> list[dict[str, str]]:
    """Build one text QA row per (condition, question type), shuffled.

    Every fifth row carries the question in ``instruction`` with an empty ``input``,
    so both layouts occur.

    Args:
        rng: Seeded random generator.

    Returns:
        ``len(CONDITIONS) * len(QUESTION_TEMPLATES)`` distinct rows.
    """
    rows: list[dict[str, str]] = []
    for cond in CONDITIONS:
        for topic, template in QUESTION_TEMPLATES.items():
            question = template.format(name=cond.name)
            answer = getattr(cond, topic)
            if len(rows) % 5 == 4:
                rows.append({"instruction": question, "input": "", "output": answer})
            else:
                instruction = rng.choice(TEXT_QA_INSTRUCTIONS)
                rows.append({"instruction": instruction, "input": question, "output": answer})
    rng.shuffle(rows)
    return rows


def require_tools(*names: str) -> None:
    """Exit with a message when a needed command-line tool is missing.

    Args:
        names: Executable names to look up on PATH.
    """
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        sys.exit(f"make_sample_data: missing tools on PATH: {', '.join(missing)}")


def synthesize(text: str, out_wav: Path, work_dir: Path) -> float:
    """Speak ``text`` with espeak-ng and write a 16 kHz mono 16-bit PCM WAV.

    Leading/trailing silence is trimmed and a short pad added. A clip longer than
    ``MAX_SECONDS`` is re-spoken faster; one shorter than ``MIN_SECONDS`` is padded.

    Args:
        text: Korean text to speak.
        out_wav: Destination WAV.
        work_dir: Scratch directory for espeak-ng's raw output.

    Returns:
        The duration of the written clip in seconds.
    """
    speed = ESPEAK_SPEED
    raw = work_dir / "raw.wav"
    for _ in range(4):
        subprocess.run(
            ["espeak-ng", "-v", ESPEAK_VOICE, "-s", str(speed), "-w", str(raw), text],
            check=True,
        )
        _convert(raw, out_wav, extra_pad=0.0)
        duration = soundfile.info(str(out_wav)).duration
        if duration <= MAX_SECONDS:
            break
        speed = int(speed * duration / (MAX_SECONDS - 0.1)) + 1
        log.info("%s: %.2fs too long, re-speaking at speed %d", out_wav.name, duration, speed)
    if duration < MIN_SECONDS:
        _convert(raw, out_wav, extra_pad=(MIN_SECONDS - duration) / 2 + 0.01)
        duration = soundfile.info(str(out_wav)).duration
    return duration


def _convert(raw: Path, out_wav: Path, *, extra_pad: float) -> None:
    pad = f"{PAD_SECONDS + extra_pad:.3f}"
    subprocess.run(
        [
            "sox", "-D", "-R", "-V1", str(raw),
            "-c", "1", "-b", "16", "-e", "signed-integer", str(out_wav),
            "silence", "1", "0.01", "0.5%", "reverse", "silence", "1", "0.01", "0.5%", "reverse",
            "gain", "-n", "-3", "rate", "-h", str(SAMPLE_RATE), "pad", pad, pad,
        ],
        check=True,
    )


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    """Write rows as UTF-8 JSON lines (Hangul unescaped).

    Args:
        path: Destination file.
        rows: The records.
    """
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    log.info("wrote %s (%d rows)", path, len(rows))


def build_asr(audio_dir: Path, work_dir: Path) -> list[dict[str, str]]:
    """Speak every ASR sentence and return the ASR rows (paths relative to out dir).

    Args:
        audio_dir: Where the WAVs go (``<out>/audio``).
        work_dir: Scratch directory.

    Returns:
        One row per sentence in ``ASR_SENTENCES`` order.
    """
    rows: list[dict[str, str]] = []
    for i, sentence in enumerate(ASR_SENTENCES):
        name = f"asr_{i:03d}.wav"
        synthesize(sentence, audio_dir / name, work_dir)
        rows.append({"audio_path": f"audio/{name}", "transcript": sentence, "language": "ko"})
    return rows


def build_speech_qa(audio_dir: Path, work_dir: Path, rng: random.Random) -> list[dict[str, str]]:
    """Speak every question and return speech QA rows (``question`` kept as an extra key).

    Args:
        audio_dir: Where the WAVs go (``<out>/audio``).
        work_dir: Scratch directory.
        rng: Seeded random generator (picks the instruction wording).

    Returns:
        One row per pair in ``SPEECH_QA_PAIRS`` order.
    """
    rows: list[dict[str, str]] = []
    for i, (question, answer) in enumerate(SPEECH_QA_PAIRS):
        name = f"sqa_{i:03d}.wav"
        synthesize(question, audio_dir / name, work_dir)
        rows.append({
            "instruction": rng.choice(SPEECH_QA_INSTRUCTIONS),
            "input": "",
            "audio_path": f"audio/{name}",
            "output": answer,
            "question": question,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    """Generate the sample data set.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        Process exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    require_tools("espeak-ng", "sox")

    out: Path = args.out
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    for stale in audio_dir.glob("*.wav"):
        stale.unlink()
    rng = random.Random(args.seed)

    text_qa = build_text_qa(rng)
    write_jsonl(out / "text_qa_train.jsonl", text_qa[:N_TEXT_QA_TRAIN])
    write_jsonl(out / "text_qa_val.jsonl", text_qa[N_TEXT_QA_TRAIN:])
    with tempfile.TemporaryDirectory() as tmp:
        asr = build_asr(audio_dir, Path(tmp))
        speech_qa = build_speech_qa(audio_dir, Path(tmp), rng)
    write_jsonl(out / "asr_train.jsonl", asr[:N_ASR_TRAIN])
    write_jsonl(out / "asr_val.jsonl", asr[N_ASR_TRAIN:])
    write_jsonl(out / "speech_qa_train.jsonl", speech_qa[:N_SPEECH_QA_TRAIN])
    write_jsonl(out / "speech_qa_val.jsonl", speech_qa[N_SPEECH_QA_TRAIN:])

    total = sum(p.stat().st_size for p in audio_dir.glob("*.wav"))
    log.info("audio: %d clips, %.2f MB", len(asr) + len(speech_qa), total / 1e6)
    if total > MAX_TOTAL_AUDIO_BYTES:
        log.warning("audio is %.2f MB, above the %.0f MB budget", total / 1e6, MAX_TOTAL_AUDIO_BYTES / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
