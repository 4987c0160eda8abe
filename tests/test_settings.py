"""Settings: embedded defaults, and one clear line for each bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import SettingsError, load_settings


def test_defaults_run_on_one_machine(tmp_path):
    settings = load_settings({"IMPASTO_DATA_DIR": str(tmp_path)})
    assert settings.data_dir == tmp_path
    assert settings.database_url == f"sqlite:///{tmp_path / 'impasto.db'}"
    assert settings.storage_url == (tmp_path / "storage").as_uri()
    assert settings.broker_url is None  # `impasto up` starts one
    assert settings.queue == "impasto"
    assert settings.queues == ("impasto.gpu", "impasto.cpu") and settings.cpu_max_size == 256
    assert settings.s3_downloads == "redirect" and settings.s3_public_endpoint_url is None
    assert settings.max_size >= 1024 and settings.max_iterations >= 1000


def test_values_from_the_environment(tmp_path):
    settings = load_settings(
        {
            "IMPASTO_DATA_DIR": str(tmp_path),
            "IMPASTO_DATABASE_URL": "postgresql://u@db/impasto",
            "IMPASTO_BROKER_URL": "redis://cache:6379/2",
            "IMPASTO_STORAGE_URL": "s3://bucket/prefix",
            "IMPASTO_MAX_SIZE": "1024",
            "IMPASTO_STRICT_WEIGHTS": "yes",
        }
    )
    assert (settings.database_url, settings.broker_url, settings.storage_url) == (
        "postgresql://u@db/impasto",
        "redis://cache:6379/2",
        "s3://bucket/prefix",
    )
    assert settings.max_size == 1024 and settings.strict_weights


def test_a_plain_folder_is_a_storage_url(tmp_path):
    settings = load_settings({"IMPASTO_STORAGE_URL": str(tmp_path / "images")})
    assert settings.storage_url == (tmp_path / "images").as_uri()


def test_overrides_win(tmp_path):
    settings = load_settings({"IMPASTO_DATA_DIR": "/nowhere"}, data_dir=tmp_path)
    assert settings.data_dir == Path(tmp_path)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        (
            "IMPASTO_DATABASE_URL",
            "mysql://x/y",
            "IMPASTO_DATABASE_URL='mysql://x/y': expected a URL starting with sqlite://",
        ),
        (
            "IMPASTO_BROKER_URL",
            "amqp://guest@rabbit//",
            "IMPASTO_BROKER_URL='amqp://guest@rabbit//': expected a URL starting with redis://",
        ),
        ("IMPASTO_STORAGE_URL", "s3://", "name the bucket"),
        ("IMPASTO_STORAGE_URL", "ftp://host/x", "use a folder path, file:///PATH or s3://BUCKET/PREFIX"),
        ("IMPASTO_MAX_SIZE", "big", "IMPASTO_MAX_SIZE='big': expected a whole number"),
        ("IMPASTO_MAX_SIZE", "8", "must be between 16 and 8192"),
        ("IMPASTO_MAX_ITERATIONS", "0", "must be between 1 and 100000"),
        ("IMPASTO_STRICT_WEIGHTS", "maybe", "expected 1 or 0"),
        ("IMPASTO_QUEUE", "a queue", "letters, digits"),
        ("IMPASTO_GPU_QUEUE", "gpu queue", "letters, digits"),
        ("IMPASTO_CPU_MAX_SIZE", "-1", "IMPASTO_CPU_MAX_SIZE='-1': must be at least 0"),
        ("IMPASTO_S3_DOWNLOADS", "proxy", "IMPASTO_S3_DOWNLOADS='proxy': expected redirect or stream"),
        ("IMPASTO_S3_PUBLIC_ENDPOINT_URL", "s3.example.com", "expected a URL starting with http:// or https://"),
        ("IMPASTO_S3_URL_EXPIRY", "5", "must be between 10 and 604800"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(name, value, says):
    with pytest.raises(SettingsError) as caught:
        load_settings({name: value})
    message = str(caught.value)
    assert says in message and name in message and "\n" not in message


def test_require_broker_says_how_to_get_one():
    with pytest.raises(SettingsError, match="IMPASTO_BROKER_URL is not set.*impasto up"):
        load_settings({}).require_broker()
