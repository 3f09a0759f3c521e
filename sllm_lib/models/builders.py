"""Base model builders: tiny presets built from a config with random weights, local paths and hub ids.

A tiny preset is materialised once into a local folder (config, random weights, tokenizer, feature
extractor) and then loaded through the same `from_pretrained` path as a local checkpoint or a hub id,
so the real loading code is what the demo and the tests run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sllm_lib.errors import ArtifactNotFoundError, JobSpecError
from sllm_lib.files import building_folder, sllm_home
from sllm_lib.spec import ModelSpec, QuantSpec
from sllm_lib.spec.base import MINI_PREFIX, TINY_PREFIX, TINY_PRESETS  # noqa: F401  (also this module's API)

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "[INST]", "[/INST]", "[BEGIN_AUDIO]", "[AUDIO]"]
PRESET_VERSION = 3  # bump when a preset's construction changes (part of its folder name)


def tiny_voxtral_config(
    *, vocab_size: int, audio_token_id: int, n_audio_layer: int = 2, n_text_layer: int = 2, d_audio: int = 64,
    d_text: int = 64,
) -> Any:
    """A Voxtral config with Whisper-shaped audio (128 mels, 3000 frames -> 375 tokens) and a small Llama.

    The projector reshapes encoder states by 4 (audio intermediate_size == 4 * d_audio), as in the real
    model (1280 -> 5120), which is what gives 375 audio tokens per 30 s chunk.
    """
    from transformers import VoxtralConfig

    return VoxtralConfig(
        audio_config=dict(
            model_type="voxtral_encoder", hidden_size=d_audio, intermediate_size=4 * d_audio,
            num_hidden_layers=n_audio_layer, num_attention_heads=4, num_mel_bins=128, max_source_positions=1500,
        ),
        text_config=dict(
            model_type="llama", hidden_size=d_text, intermediate_size=2 * d_text, num_hidden_layers=n_text_layer,
            num_attention_heads=4, num_key_value_heads=2, head_dim=d_text // 4, vocab_size=vocab_size,
            max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            # 10x the usual 0.02: at 0.02 a random 64-wide model's logits are near uniform and LoRA deltas barely
            # move them (loss 9.35 -> 9.0 in 40 steps); at 0.2 the demo's stage-1 loss visibly falls (-> ~6.8).
            initializer_range=0.2,
        ),
        audio_token_id=audio_token_id,
    )


def tiny_llama_config(*, vocab_size: int, n_layer: int = 2, d_model: int = 64) -> Any:
    """A small Llama causal LM (the text-only pipelines: medical QA SFT, classification by instruction tuning)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layer, num_attention_heads=4,
        num_key_value_heads=2, head_dim=d_model // 4, vocab_size=vocab_size, max_position_embeddings=4096,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        initializer_range=0.2,  # as the Voxtral preset's LLM: visible loss movement in a few LoRA steps
    )


# The tiny causal LM's chat template: system text, then [INST]user[/INST], the answer and </s> (the control
# tokens are single ids of the char tokenizer). Real models bring their own template with their tokenizer.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}[INST]{{ m['content'] }}[/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def tiny_llava_config(*, vocab_size: int, image_token_index: int) -> Any:
    """The tiny Llava's config: a 1-layer CLIP vision tower on 32x32 images (16 patches + CLS), the tiny Llama."""
    from transformers import CLIPVisionConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    return LlavaConfig(vision_config=vision.to_dict(), text_config=tiny_llama_config(vocab_size=vocab_size).to_dict(),
                       image_token_index=image_token_index, image_seq_length=16,
                       vision_feature_select_strategy="default", vision_feature_layer=-1)


def _tiny_llava(tokenizer: Any) -> tuple[Any, Any]:
    """A Llava model (1-layer CLIP vision tower on 32x32 images, 16 tokens per image; the tiny Llama LLM) and its
    processor, from configs; adds the <image> token to `tokenizer`."""
    from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer.add_tokens(["<image>"], special_tokens=True)
    config = tiny_llava_config(vocab_size=len(tokenizer), image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8, image_token="<image>",
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return LlavaForConditionalGeneration(config), processor


def korean_char_vocab() -> list[str]:
    """Special tokens, every precomposed Hangul syllable, compatibility jamo, newline/tab, printable ASCII, symbols."""
    chars = [chr(c) for c in range(0xAC00, 0xD7A4)]
    chars += [chr(c) for c in range(0x3131, 0x318F)]
    chars += ["\n", "\t"] + [chr(c) for c in range(0x20, 0x7F)]
    chars += list("·“”‘’…℃°%±×÷→~")
    seen: set[str] = set()
    vocab = []
    for t in SPECIAL_TOKENS + chars:
        if t not in seen:
            seen.add(t)
            vocab.append(t)
    return vocab


def build_char_tokenizer() -> Any:
    """A character-level fast tokenizer for Korean (no training data, no download)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(korean_char_vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )


def _preset_root() -> Path:
    return sllm_home() / "presets"


def materialize_tiny(preset: str, *, seed: int = 0) -> Path:
    """Build (once) and return the folder of a tiny preset; written atomically (temp dir + rename)."""
    if preset not in TINY_PRESETS:
        raise JobSpecError(f"model.base: unknown tiny preset {preset!r}; available: "
                           + ", ".join(f"tiny:{p}" for p in TINY_PRESETS))
    key = hashlib.sha256(f"{preset}-{seed}-v{PRESET_VERSION}".encode()).hexdigest()[:12]
    target = _preset_root() / f"{preset}-{key}"
    return build_preset_once(target, lambda: _build_tiny(preset, seed, target), f"tiny preset {preset!r}")


def build_preset_once(target: Path, build: Any, what: str) -> Path:
    """`target` once `build()` has published it there with its `.complete` marker (skipped when it already has)."""
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # transformers writes model files on rank 0 only once a process group exists (Ray Train makes it before
        # the stage starts): rank 0 builds, the others wait for it
        if dist.get_rank() == 0:
            build()
        dist.barrier()
        if not (target / ".complete").is_file():
            raise JobSpecError(f"{what}: rank 0 did not finish building {target}")
        return target
    build()
    return target


def _build_tiny(preset: str, seed: int, target: Path) -> None:
    import torch
    from transformers import LlamaForCausalLM, VoxtralForConditionalGeneration, WhisperFeatureExtractor

    # another process building the same preset at once makes an identical copy: the first one to finish wins
    with building_folder(target, if_exists="keep") as tmp:
        tokenizer = build_char_tokenizer()
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream must not depend on a cache miss here
            torch.manual_seed(seed)
            if preset == "voxtral":
                config = tiny_voxtral_config(
                    vocab_size=len(tokenizer), audio_token_id=tokenizer.convert_tokens_to_ids("[AUDIO]")
                )
                model = VoxtralForConditionalGeneration(config)
            elif preset == "llava":
                model, processor = _tiny_llava(tokenizer)
            else:
                layers = 1 if preset == "llama-half" else 2
                model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer), n_layer=layers))
                tokenizer.chat_template = TINY_CHAT_TEMPLATE
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if preset == "llava":
            processor.save_pretrained(tmp)
        if preset == "voxtral":
            WhisperFeatureExtractor(feature_size=128).save_pretrained(tmp)
        if not (tmp / "config.json").is_file():
            raise JobSpecError(f"tiny preset {preset!r}: the model was not written to {tmp}")
        (tmp / ".complete").write_text(json.dumps({"preset": preset, "seed": seed}))
    log.info("built tiny preset %s at %s", preset, target)


def resolve_model_path(model: ModelSpec) -> str:
    """A loadable location: the tiny preset's folder, a local folder, or the hub id itself."""
    base = model.base
    if base.startswith(TINY_PREFIX):
        return str(materialize_tiny(base[len(TINY_PREFIX):]))
    if base.startswith(MINI_PREFIX):
        from sllm_lib.models.mini import materialize_mini

        return str(materialize_mini(base[len(MINI_PREFIX):]))
    p = Path(base).expanduser()
    if p.is_absolute() or base.startswith("."):
        if not (p / "config.json").is_file():
            raise ArtifactNotFoundError(f"model.base: {p} is not a model folder (no config.json)")
        return str(p)
    return base  # a hub id: from_pretrained downloads it (needs network and, for gated models, a token)


@dataclass(frozen=True)
class ChatTokens:
    """Token ids used to build prompts at the id level (works for HF fast and Mistral tokenizers alike)."""

    bos: int | None
    eos: int
    pad: int
    inst: int | None
    inst_end: int | None
    begin_audio: int | None
    audio: int


def _token_id(tokenizer: Any, token: str) -> int | None:
    try:
        tid = tokenizer.convert_tokens_to_ids(token)
    except (KeyError, ValueError, TypeError):
        return None
    unk = getattr(tokenizer, "unk_token_id", None)
    return None if tid is None or (unk is not None and tid == unk and token != "<unk>") else int(tid)


def chat_tokens(tokenizer: Any, config: Any) -> ChatTokens:
    """Resolve the control tokens; audio_token_id from the config or the tokenizer's [AUDIO]."""
    audio = getattr(config, "audio_token_id", None)
    if audio is None:
        audio = _token_id(tokenizer, "[AUDIO]")
    if audio is None:
        raise JobSpecError("model: no audio token id (config.audio_token_id is None and the tokenizer has no [AUDIO])")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return ChatTokens(
        bos=tokenizer.bos_token_id, eos=int(eos), pad=int(pad), inst=_token_id(tokenizer, "[INST]"),
        inst_end=_token_id(tokenizer, "[/INST]"), begin_audio=_token_id(tokenizer, "[BEGIN_AUDIO]"), audio=int(audio),
    )


@dataclass(frozen=True)
class TemplateChat:
    """Prompts of a text-only causal LM through its tokenizer's chat template (with an optional system prompt)."""

    eos: int
    pad: int
    system_prompt: str | None = None

    def prompt_ids(self, tokenizer: Any, text: str) -> list[int]:
        """The template's token ids for one user turn, ending where the assistant's answer starts."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": text})
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # a BatchEncoding on some tokenizers
            ids = ids["input_ids"]
        return [int(i) for i in ids]


VOXTRAL_TYPES = ("voxtral",)
VISION_TYPES = ("llava", "llava_next", "llava_onevision", "idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl", "phi3_v",
                "mllama", "gemma3", "paligemma")


def is_vision_model(config: Any) -> bool:
    """True for a vision-language model (vision tower + projector + LLM)."""
    return getattr(config, "model_type", None) in VISION_TYPES or (
        hasattr(config, "vision_config") and not is_speech_model(config))


@dataclass(frozen=True)
class VisionChat:
    """Prompts of a vision-language model: the images through its processor, then the rendered text."""

    eos: int
    pad: int
    processor: Any
    render: Any  # record -> the text after the images

    def prompt(self, record: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
        """(prompt token ids with the image tokens expanded, the image tensors as numpy arrays by input name)."""
        from PIL import Image

        images = []
        for path in record["images"]:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        text = self.render(record)
        template = getattr(self.processor, "chat_template", None)
        if template:
            content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
            text = self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True, tokenize=False)
        else:
            text = getattr(self.processor, "image_token", "<image>") * len(images) + "\n" + text + "\n"
        enc = self.processor(text=text, images=images, return_tensors="np")
        ids = [int(i) for i in enc["input_ids"][0]]
        tensors = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        return ids, tensors


def is_speech_model(config: Any) -> bool:
    """True for the speech LLM architecture (audio encoder + projector + LLM); False for a text-only causal LM."""
    return getattr(config, "model_type", None) in VOXTRAL_TYPES


def is_whisper_model(config: Any) -> bool:
    """True for a Whisper speech recognizer (encoder-decoder, its own decoder and tokenizer): an ASR baseline in
    evaluation suites, not a model the training stages fine-tune."""
    return getattr(config, "model_type", None) == "whisper"


def chat_for(tokenizer: Any, config: Any, *, system_prompt: str | None = None, processor: Any = None,
             render: Any = None) -> Any:
    """ChatTokens for the speech LLM; VisionChat for a vision-language model (its processor and the stage's prompt
    `render`); a TemplateChat (the tokenizer's chat template) for a causal LM."""
    if is_speech_model(config):
        return chat_tokens(tokenizer, config)
    if is_vision_model(config):
        if processor is None or render is None:
            raise JobSpecError("a vision-language model needs its processor and a prompt renderer")
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        return VisionChat(eos=int(eos), pad=int(pad), processor=processor, render=render)
    if not getattr(tokenizer, "chat_template", None):
        raise JobSpecError(f"model.base: the tokenizer of {getattr(config, '_name_or_path', '') or 'the model'} has "
                           f"no chat template; use an instruct model (its tokenizer_config.json holds one)")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise JobSpecError("model.base: the tokenizer has no eos token (needed to end answers)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return TemplateChat(eos=int(eos), pad=int(pad), system_prompt=system_prompt)


def load_model_config(path: str, model: ModelSpec) -> Any:
    """The model's config (no weights): what decides the architecture before anything heavy is loaded."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except OSError as exc:
        raise ArtifactNotFoundError(f"model.base: cannot load {path!r} ({exc})") from exc
    except ValueError as exc:  # e.g. a model type that needs trust_remote_code
        raise JobSpecError(f"model.base: {path!r}: {exc}") from exc
    if model.audio_token_id is not None:
        config.audio_token_id = model.audio_token_id
    return config


def folder_model_spec(path: str | Path) -> ModelSpec:
    """The ModelSpec of a merged model folder: remote-code models (the merge records it) load as they trained."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    return ModelSpec(base=str(path), trust_remote_code=bool(manifest.get("trust_remote_code", False)))


def load_tokenizer_and_features(path: str, *, revision: str | None = None,
                                trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Tokenizer and Whisper feature extractor from a model folder or hub id (processor first); a text-only
    causal LM has no feature extractor (None)."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoProcessor, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):  # unreachable or unknown: the loaders below say why if they fail too
        config = None
    if config is not None and is_whisper_model(config):
        from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

        return (WhisperTokenizerFast.from_pretrained(path, revision=revision),
                WhisperFeatureExtractor.from_pretrained(path, revision=revision))
    if config is not None and is_vision_model(config):  # the processor is the "features" of a VLM
        processor = AutoProcessor.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
        return processor.tokenizer, processor
    if config is not None and not is_speech_model(config):
        return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code), None
    try:
        processor = AutoProcessor.from_pretrained(path, revision=revision)
        tokenizer = getattr(processor, "tokenizer", None)
        features = getattr(processor, "feature_extractor", None)
        if tokenizer is not None and features is not None:
            return tokenizer, features
    except (OSError, ValueError, TypeError, KeyError, ImportError) as exc:
        log.debug("no processor at %s (%s); loading tokenizer and feature extractor apart", path, exc)
    return AutoTokenizer.from_pretrained(path, revision=revision), AutoFeatureExtractor.from_pretrained(
        path, revision=revision
    )


# Kept unquantized: the projector is trained in full by the ASR stages (a 4-bit weight cannot take gradients)
# and is small; lm_head as bitsandbytes' own default (tied to the embeddings here).
# transformers 5 matches these from the start of a module name or as its suffix: the projector needs its full path
QUANT_SKIP_MODULES = ("model.multi_modal_projector", "multi_modal_projector", "lm_head")


def quantization_config(quant: QuantSpec) -> Any:
    """A BitsAndBytesConfig for 4/8-bit, or None."""
    if quant.bits == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    skip = list(QUANT_SKIP_MODULES)
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type, bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, quant.compute_dtype), bnb_4bit_quant_storage=getattr(torch, quant.storage),
        llm_int8_skip_modules=skip,
    )


def load_base_model(path: str, *, model: ModelSpec, quant: QuantSpec | None = None, dtype: str = "float32",
                    config: Any = None) -> Any:
    """Load the speech LLM (Voxtral architecture) or a text-only causal LM from a folder or hub id, optionally
    quantized."""
    import torch
    from transformers import AutoModelForCausalLM, VoxtralForConditionalGeneration

    qcfg = quantization_config(quant) if quant is not None else None
    config = config if config is not None else load_model_config(path, model)
    from sllm_lib.models.variants import DYNAMIC_MARKER, load_dynamic_int8

    if (Path(path) / DYNAMIC_MARKER).is_file():  # a quantize stage's CPU (dynamic int8) model
        return load_dynamic_int8(Path(path), config, trust_remote_code=model.trust_remote_code)
    kwargs: dict[str, Any] = {"config": config, "revision": model.revision, "dtype": getattr(torch, dtype)}
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    if is_speech_model(config):
        return VoxtralForConditionalGeneration.from_pretrained(path, **kwargs)
    if is_whisper_model(config):
        from transformers import WhisperForConditionalGeneration

        return WhisperForConditionalGeneration.from_pretrained(path, **kwargs)
    if is_vision_model(config):
        from transformers import AutoModelForImageTextToText

        try:
            return AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=model.trust_remote_code,
                                                               **kwargs)
        except ValueError:  # remote-code VLMs (Phi-3.5-vision) register as causal LMs
            return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=model.trust_remote_code, **kwargs)
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=model.trust_remote_code, **kwargs)
