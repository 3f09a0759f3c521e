"""Secret detection and masking: names, values, URIs, logs."""

from __future__ import annotations

import logging

import pytest

from sllm_lib import secrets


@pytest.fixture(autouse=True)
def _clean():
    saved = (set(secrets._values), set(secrets._extra_names))
    yield
    secrets._values.clear()
    secrets._values.update(saved[0])
    secrets._extra_names.clear()
    secrets._extra_names.update(saved[1])


@pytest.mark.parametrize("name", ["HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "api_key",
                                  "OPENAI_API_KEY", "db_passwd", "private-key", "WANDB_API_KEY", "githubToken",
                                  "access_token", "client_secret"])
def test_secret_names(name: str) -> None:
    assert secrets.is_secret_name(name)


@pytest.mark.parametrize("name", ["HOME", "lr", "max_steps", "SLURM_JOB_ID", "keywords", "tokenizer",
                                  "max_new_tokens", "TOKENS_PER_CHUNK", "monkey", "key", "sort_key",
                                  "PWD", "OLDPWD"])
def test_ordinary_names(name: str) -> None:
    assert not secrets.is_secret_name(name)


def test_redact_tree_env_and_uri() -> None:
    secrets.register_environment({"MY_SERVICE_TOKEN": "tok-12345", "PATH": "/usr/bin"})
    data = {"env": {"HF_TOKEN": "hf_abcdef", "MODE": "fast", "REF": "${HF_TOKEN}"},
            "tracking": {"uri": "https://alice:pa55word@mlflow.example:5000"},
            "description": "pasted tok-12345 by mistake"}
    secrets.register_from(data)
    out = secrets.redact(data)
    assert out["env"] == {"HF_TOKEN": "***", "MODE": "fast", "REF": "${HF_TOKEN}"}
    assert out["tracking"]["uri"] == "https://alice:***@mlflow.example:5000"
    assert out["description"] == "pasted *** by mistake"
    assert secrets.redact_text("hf_abcdef and pa55word") == "*** and ***"


def test_extra_names_from_tracking_redact() -> None:
    secrets.register_names(["hospital_id"])
    assert secrets.redact({"hospital_id": "H-0042"}) == {"hospital_id": "***"}


def test_log_filter_masks_messages_and_args(caplog: pytest.LogCaptureFixture) -> None:
    secrets.register_values(["s3cr3t-value"])
    logger = logging.getLogger("sllm_lib.test_secrets")
    handler = logging.StreamHandler()
    handler.addFilter(secrets.RedactingFilter())
    caplog.handler.addFilter(secrets.RedactingFilter())
    logger.warning("token is %s", "s3cr3t-value")
    assert "s3cr3t-value" not in caplog.text and "token is ***" in caplog.text


def test_resolve_env_reads_references() -> None:
    assert secrets.resolve_env({"A": "${X}", "B": "lit"}, {"X": "1"}) == {"A": "1", "B": "lit"}
    with pytest.raises(KeyError, match="env.A"):
        secrets.resolve_env({"A": "${MISSING_VAR}"}, {})


def test_setting_values_under_secret_names_are_not_registered() -> None:
    secrets.register_environment({"HF_HUB_DISABLE_IMPLICIT_TOKEN": "true", "SOME_TOKEN_TTL": "3600",
                                  "A_TOKEN": "${OTHER}", "SHORT_TOKEN": "abc"})
    assert secrets.redact_text("do_sample true, ttl 3600, abc, ${OTHER}") == "do_sample true, ttl 3600, abc, ${OTHER}"


def test_the_shells_working_directory_is_not_masked() -> None:
    # bash exports PWD: masking it turned every path under the checkout into *** in the stage logs
    secrets.register_environment({"PWD": "/work/project", "OLDPWD": "/home/someone", "DB_PWD": "hunter2-long"})
    assert secrets.redact_text("/work/project/runs and /home/someone") == "/work/project/runs and /home/someone"
    assert secrets.redact_text("pw hunter2-long") == "pw ***"
