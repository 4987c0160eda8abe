"""docker-compose.yml and the Dockerfile, checked without Docker: structure, commands and settings.

Docker cannot run where the tests run, so this reads the files: the compose file must parse, name
the services the deployment needs, run only `impasto` subcommands that pyproject.toml registers,
and pass only IMPASTO_* variables that shared/settings.py reads, with defaults it accepts.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from shared.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SETTINGS_SOURCE = ROOT / "shared" / "settings.py"

SERVICES = ("redis", "postgres", "minio", "createbucket", "migrate", "web", "worker")
PROJECT_COMMANDS = {"migrate": ["db", "upgrade"], "web": ["web"], "worker": ["worker"]}

# ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR, and $$ (a literal dollar), as compose reads them.
INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def interpolate(value, environ: dict[str, str]):
    """Resolve compose's ${VAR:-default} in every string of `value`, as `docker compose` would."""
    if isinstance(value, dict):
        return {key: interpolate(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environ) for item in value]
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        found = environ.get(name)
        if match.group(2) == ":-":
            return found or match.group(3)
        if match.group(2) == "-":
            return match.group(3) if found is None else found
        return found or ""

    return INTERPOLATION.sub(resolve, value)


def environment(service: dict) -> dict[str, str]:
    """A service's environment as a mapping, whether written as a mapping or as KEY=VALUE lines."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(line.split("=", 1) if "=" in line else (line, "") for line in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def argv(service: dict) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def depends_on(service: dict) -> dict[str, str]:
    """{dependency: condition}; the short list form means service_started."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def test_compose_parses_with_the_needed_services(compose):
    assert isinstance(compose, dict)
    services = compose.get("services")
    assert isinstance(services, dict)
    missing = [name for name in SERVICES if name not in services]
    assert not missing, f"docker-compose.yml lacks the services {missing}"
    for name, service in services.items():
        assert "image" in service or "build" in service, f"service {name} has neither image nor build"


def test_every_interpolation_has_a_default():
    """`docker compose up` must work with no .env file: each ${VAR} carries a :-default."""
    bare = [
        m.group(0) for m in INTERPOLATION.finditer(COMPOSE.read_text()) if m.group(0) != "$$" and m.group(2) is None
    ]
    assert not bare, f"variables without a default: {bare}"


def test_impasto_commands_are_registered_subcommands(compose, pyproject):
    registered = pyproject["project"]["entry-points"]["impasto.commands"]
    assert set(pyproject["project"]["scripts"]) == {"impasto"}
    services = compose["services"]
    for name, expected in PROJECT_COMMANDS.items():
        assert argv(services[name])[: 1 + len(expected)] == ["impasto", *expected], name
    for name, service in services.items():
        command = argv(service)
        built_here = "build" in service or str(service.get("image", "")).startswith("impasto")
        if built_here:
            assert command[:1] == ["impasto"], f"service {name} runs the project image but not `impasto`"
        if command[:1] == ["impasto"]:
            assert len(command) > 1 and command[1] in registered, (
                f"service {name} runs `{' '.join(command)}`, but pyproject.toml registers only {sorted(registered)}"
            )


def test_project_services_share_one_image_built_here(compose):
    builds = {name: compose["services"][name].get("build") for name in PROJECT_COMMANDS}
    images = {compose["services"][name].get("image") for name in PROJECT_COMMANDS}
    for name, build in builds.items():
        context = build.get("context") if isinstance(build, dict) else build
        dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
        assert context in (".", "./"), f"service {name} is not built from the project root"
        assert (ROOT / dockerfile).is_file()
    assert len(images) == 1, f"web, worker and migrate should share one image, not {images}"


def test_migrate_waits_for_postgres_and_web_for_migrate(compose):
    services = compose["services"]
    assert depends_on(services["migrate"]).get("postgres") == "service_healthy"
    for name in ("web", "worker"):
        assert depends_on(services[name]).get("migrate") == "service_completed_successfully", name
    assert "pg_isready" in " ".join(map(str, services["postgres"]["healthcheck"]["test"]))


def test_web_listens_on_8000_with_a_healthcheck(compose):
    web = compose["services"]["web"]
    command = argv(web)
    assert command[command.index("--port") + 1] == "8000"
    assert "8000:8000" in [str(port) for port in web["ports"]]
    check = web["healthcheck"]["test"]
    check = check if isinstance(check, str) else " ".join(map(str, check))
    assert "/healthz" in check and ":8000" in check


def test_worker_reserves_gpus(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    gpus = [device for device in devices if "gpu" in device.get("capabilities", [])]
    assert gpus, "the worker reserves no device with capability gpu"
    for device in gpus:
        assert device.get("driver") == "nvidia"
        assert device.get("count") in ("all", 1) or device.get("device_ids")


def test_redis_persists_to_a_named_volume(compose):
    redis = compose["services"]["redis"]
    command = argv(redis)
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes"
    assert_named_volume(compose, "redis", "/data")


@pytest.mark.parametrize(
    ("service", "path"),
    [
        ("postgres", "/var/lib/postgresql/data"),
        ("minio", "/data"),
        ("worker", "/models/torch"),
    ],
)
def test_state_lives_in_named_volumes(compose, service, path):
    assert_named_volume(compose, service, path)


def assert_named_volume(compose: dict, service: str, path: str) -> None:
    mounts = {}
    for volume in compose["services"][service].get("volumes", []):
        if isinstance(volume, dict):
            mounts[volume.get("target")] = volume.get("source")
        else:
            source, _, rest = str(volume).partition(":")
            mounts[rest.split(":")[0]] = source
    assert path in mounts, f"{service} mounts nothing at {path}"
    assert mounts[path] in (compose.get("volumes") or {}), f"{service}:{path} is not a named volume"


def test_minio_serves_data_and_the_bucket_is_the_storage_bucket(compose):
    services = compose["services"]
    assert argv(services["minio"])[:2] == ["server", "/data"]
    env = interpolate(compose["x-impasto-env"], {})
    bucket = urlsplit(env["IMPASTO_STORAGE_URL"]).netloc
    assert bucket == "impasto"
    createbucket = services["createbucket"]
    assert str(createbucket["image"]).startswith("minio/mc")
    script = interpolate(
        " ".join(argv(createbucket))
        if isinstance(createbucket["command"], str)
        else "\n".join(createbucket["command"]),
        {},
    )
    made = re.findall(r"\bmc mb\b[^\n]*?\s\S+/(\S+)\s*$", script, re.MULTILINE)
    assert made == [bucket], f"createbucket makes {made}, the storage URL names {bucket!r}"


def test_minio_credentials_match_the_s3_credentials(compose):
    env = interpolate(compose["x-impasto-env"], {})
    minio = interpolate(environment(compose["services"]["minio"]), {})
    assert minio["MINIO_ROOT_USER"] == env["AWS_ACCESS_KEY_ID"]
    assert minio["MINIO_ROOT_PASSWORD"] == env["AWS_SECRET_ACCESS_KEY"]
    assert len(env["AWS_SECRET_ACCESS_KEY"]) >= 8, "MinIO refuses a root password under 8 characters"


def test_shared_environment(compose):
    env = interpolate(compose["x-impasto-env"], {})
    assert env["IMPASTO_DATABASE_URL"] == "postgresql+psycopg://impasto:impasto@postgres:5432/impasto"
    assert env["IMPASTO_BROKER_URL"] == "redis://redis:6379/0"
    assert env["IMPASTO_STORAGE_URL"] == "s3://impasto/jobs"
    assert env["IMPASTO_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["IMPASTO_DATA_DIR"] == "/data"
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    for name in PROJECT_COMMANDS:
        service_env = environment(compose["services"][name])
        assert {key: service_env.get(key) for key in compose["x-impasto-env"]} == {
            key: str(value) for key, value in compose["x-impasto-env"].items()
        }, name


def test_every_impasto_variable_is_a_setting(compose):
    """A misspelt IMPASTO_* variable would be silently ignored: each must be read by settings.py."""
    source = SETTINGS_SOURCE.read_text()
    envs = [environment({"environment": compose["x-impasto-env"]})]
    envs += [environment(service) for service in compose["services"].values()]
    names = {key for env in envs for key in env if key.startswith("IMPASTO_")}
    assert names
    unknown = sorted(name for name in names if f'"{name}"' not in source)
    assert not unknown, f"shared/settings.py reads none of {unknown}"


def test_the_settings_accept_the_compose_defaults(compose):
    settings = load_settings(interpolate(environment(compose["services"]["worker"]), {}))
    assert urlsplit(settings.database_url).scheme == "postgresql+psycopg"
    assert settings.require_broker().startswith("redis://")
    assert settings.storage_url.startswith("s3://")
    assert settings.s3_endpoint_url == "http://minio:9000"


def test_dockerfile_installs_the_project(pyproject):
    text = DOCKERFILE.read_text()
    lines = [
        line.strip()
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    base = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert base and re.match(r"(python:3\.11-slim|pytorch/pytorch)\b", base[-1]), base
    runs = [line for line in lines if line.upper().startswith("RUN ")]
    assert any(re.search(r"pip install\b[^&;|]*\s\.(\s|$|&|;)", run) for run in runs), (
        "no RUN line does `pip install .`"
    )
    copied = {
        source.rstrip("/")
        for line in lines
        if line.upper().startswith("COPY ")
        for source in line.split()[1:-1]
        if not source.startswith("--")
    }
    if "." not in copied:
        needed = [
            pattern.rstrip("*").rstrip(".")
            for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
        ]
        needed += ["pyproject.toml", pyproject["project"]["readme"]]
        missing = [path for path in needed if path not in copied]
        assert not missing, f"the Dockerfile does not copy {missing}, which `pip install .` needs"
