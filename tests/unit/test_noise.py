"""Library noise is dropped at the source (sllm_lib/noise.py); real errors and other warnings still show."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from sllm_lib.noise import LOG_NOISE, WARNING_NOISE, quiet_libraries
from tests.conftest import REPO

BNB_CPU = ("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please make sure "
           "you already `pip install kernels` and the kernels >= 0.11.1")
TORCH_QUANT = ("torch.quantize_per_tensor, torch.quantize_per_channel and other quantized tensor creation functions "
               "that produce tensors with dtype torch.quint8, torch.qint8, and torch.qint32 are deprecated and will "
               "be removed in a future PyTorch release. Please see https://github.com/pytorch/pytorch/issues/184982 "
               "for more information. (Triggered internally at /__w/pytorch/pytorch/aten/src/ATen/quantized/"
               "Quantizer.cpp:111.)")
TORCH_AO = "torch.ao.quantization is deprecated and will be removed in 2.10. "


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def collected():
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    for n in LOG_NOISE:
        logging.getLogger(n.logger).filters.clear()


def test_bitsandbytes_kernel_notice_is_dropped_its_real_errors_kept(collected: _Collect) -> None:
    quiet_libraries()
    quiet_libraries()  # idempotent
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert len(bnb.filters) == 1
    bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                "`pip install kernels` and the kernels >= 0.11.1", "No module named 'kernels'")
    bnb.error("CUDA Setup failed despite GPU being available")
    bnb.warning("gemv_4bit: input dtype float16 does not match compute dtype bfloat16")
    logging.getLogger("bitsandbytes.nn.modules").warning(BNB_CPU.replace("Failed", "Really failed"))
    assert collected.messages == ["CUDA Setup failed despite GPU being available",
                                  "gemv_4bit: input dtype float16 does not match compute dtype bfloat16",
                                  BNB_CPU.replace("Failed", "Really failed")]


def test_torch_deprecations_are_dropped_real_warnings_kept() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_libraries()
        warnings.warn_explicit(TORCH_QUANT, UserWarning, "torch/ao/nn/quantized/modules/utils.py", 72)
        warnings.warn_explicit(TORCH_AO, DeprecationWarning, "torch/ao/quantization/quantize.py", 570)
        warnings.warn_explicit("`torch.jit.script_method` is deprecated. Please switch to `torch.compile` or "
                               "`torch.export`.", DeprecationWarning, "torch/jit/_script.py", 365)
        warnings.warn("max_seq_len 4096 exceeds the model's 2048 positions", UserWarning)
        warnings.warn("torch.load without weights_only is deprecated", FutureWarning)
        warnings.warn(TORCH_AO, FutureWarning)  # same text, another category: not on the list
    assert [(w.category, str(w.message)) for w in seen] == [
        (UserWarning, "max_seq_len 4096 exceeds the model's 2048 positions"),
        (FutureWarning, "torch.load without weights_only is deprecated"),
        (FutureWarning, TORCH_AO),
    ]


def test_every_entry_says_why() -> None:
    assert all(len(n.why) > 20 for n in (*LOG_NOISE, *WARNING_NOISE))


def test_the_quantize_path_of_torch_is_silent_after_quiet_libraries() -> None:
    """The real thing, in a fresh process (torch warns some of these once per process): a dynamic int8 Linear."""
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from sllm_lib.noise import quiet_libraries; quiet_libraries()\n"
            "import torch\n"
            "m = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 8)), "
            "{torch.nn.Linear}, dtype=torch.qint8)\n"
            "m(torch.ones(1, 8))\n"
            "warnings.warn('a real one')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "deprecated" not in proc.stderr
    assert "UserWarning: a real one" in proc.stderr
