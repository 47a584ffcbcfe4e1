"""The deployment files agree with the contract and with each other.

No Docker engine or cluster is needed: the files are parsed and cross-checked
(ports, probe paths, names that reference each other), and every Sluice config
they carry goes through the real validator.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.config import Config, ConfigError, exposure_problem, parse_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"

PORT = 8080
HEALTH = "/healthz"
READY = "/readyz"
KEY_VARIABLES = {"OPENAI_API_KEY", "GEMINI_API_KEY", "SLUICE_ADMIN_KEY"}
K8S_KEY_VARIABLES = KEY_VARIABLES | {"SLUICE_PROXY_KEY"}
IMAGE_CMD = ["sluice", "serve", "--host", "0.0.0.0", "--port", str(PORT), "--config", "/app/config/sluice.yaml"]


# -- helpers -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def deployed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables a deployment sets from its keys (compose: the host's; k8s: the Secret)."""
    for name in K8S_KEY_VARIABLES:
        monkeypatch.setenv(name, f"value-of-{name.lower()}")


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def only(path: Path) -> dict:
    (doc,) = documents(path)
    return doc


def of_kind(path: Path, kind: str) -> dict:
    (doc,) = [d for d in documents(path) if d["kind"] == kind]
    return doc


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def instruction(name: str) -> list[str]:
    return [arguments for instr, arguments in dockerfile() if instr == name]


def check_config(text: str, source: str) -> Config:
    """The real validator; on failure the assertion lists every problem."""
    try:
        return parse_config(text, source=source)
    except ConfigError as error:
        pytest.fail(f"{source} is not a valid Sluice config:\n" + "\n".join(error.problems))


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def container_port(container: dict, port: int | str) -> int:
    """A probe's or Service's port, named or numbered, as the container's port number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


def sluice_container() -> dict:
    (container,) = only(K8S / "deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return container


# -- Dockerfile ----------------------------------------------------------------


def test_dockerfile_installs_the_project_on_python_slim():
    assert instruction("FROM") == ["python:3.11-slim"]
    assert any(re.search(r"\bpip install\b", run) for run in instruction("RUN"))
    copied = " ".join(instruction("COPY"))
    assert "pyproject.toml" in copied and "proxy" in copied


def test_dockerfile_runs_as_a_non_root_user():
    users = instruction("USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # Kubernetes' runAsNonRoot can only verify a numeric UID.
    assert user.isdigit()
    pod_security = only(K8S / "deployment.yaml")["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsUser"] == int(user)


def test_dockerfile_healthcheck_hits_healthz():
    (healthcheck,) = instruction("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD")
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"], "slim images have no curl: use python"
    assert f"http://127.0.0.1:{PORT}{HEALTH}" in argv[2]
    assert "--timeout=" in options


def test_dockerfile_exposes_and_serves_port_8080():
    assert instruction("EXPOSE") == [str(PORT)]
    (cmd,) = instruction("CMD")
    assert json.loads(cmd) == IMAGE_CMD


# -- docker compose ------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return only(DEPLOY / "docker-compose.yml")["services"]


def test_compose_has_app_sluice_redis_and_optional_ollama(compose):
    assert set(compose) == {"app", "sluice", "redis", "ollama"}
    assert compose["redis"]["image"] == "redis:7-alpine"
    assert compose["ollama"]["profiles"] == ["ollama"]
    assert all("profiles" not in compose[name] for name in ("app", "sluice", "redis"))


def test_compose_builds_sluice_from_the_repository(compose):
    build = compose["sluice"]["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_compose_serves_sluice_on_all_interfaces_port_8080(compose):
    command = compose["sluice"]["command"]
    assert command[:2] == ["sluice", "serve"]
    assert option(command, "--host") == "0.0.0.0"
    assert option(command, "--port") == str(PORT)
    # --config would win over SLUICE_CONFIG and load the image's default config.
    assert "--config" not in command
    published = [str(p).rsplit(":", 1)[-1] for p in compose["sluice"]["ports"]]
    assert str(PORT) in published


def test_compose_mounts_configs_and_passes_keys_from_the_environment(compose):
    sluice = compose["sluice"]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in sluice["volumes"])}
    assert (DEPLOY / mounts["/app/config"]).resolve() == ROOT / "config"
    config_path = sluice["environment"]["SLUICE_CONFIG"]
    assert (DEPLOY / mounts[config_path]).resolve() == DEPLOY / "sluice.compose.yaml"
    for name in KEY_VARIABLES:
        assert sluice["environment"][name].startswith("${" + name), f"{name} must come from the host environment"
    assert sluice["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_app_uses_the_openai_sdk_through_sluice(compose):
    app = compose["app"]
    assert app["image"] == "python:3.11-slim"
    base_url = urlsplit(app["environment"]["OPENAI_BASE_URL"])
    assert (base_url.hostname, base_url.port, base_url.path) == ("sluice", PORT, "/v1")
    script = " ".join(app["command"])
    assert "pip install" in script and "openai.OpenAI()" in script
    # Healthy means /healthz answers: the image's HEALTHCHECK, tested above.
    assert app["depends_on"]["sluice"]["condition"] == "service_healthy"


def test_compose_config_is_valid_and_uses_the_compose_services(compose):
    path = DEPLOY / "sluice.compose.yaml"
    config = check_config(path.read_text(), str(path))
    assert config.cache.enabled and config.cache.backend == "redis"
    assert config.cache.redis_url == "redis://redis:6379/0"
    assert urlsplit(config.cache.redis_url).hostname in compose
    (ollama,) = [p for p in config.providers if p.type == "ollama"]
    assert ollama.base_url == "http://ollama:11434"
    assert config.server.port == PORT
    grace = int(compose["sluice"]["stop_grace_period"].rstrip("s"))
    assert grace > config.server.drain_seconds


def test_configs_keep_upstream_keys_out_of_the_files():
    texts = {
        "deploy/sluice.compose.yaml": (DEPLOY / "sluice.compose.yaml").read_text(),
        "configmap sluice.yaml": only(K8S / "configmap.yaml")["data"]["sluice.yaml"],
    }
    for source, text in texts.items():
        raw = yaml.safe_load(text)
        for provider in raw["providers"]:
            assert provider.get("api_key", "${").startswith("${"), f"{source}: {provider['name']} has a literal key"
        assert raw["auth"]["admin_key"].startswith("${SLUICE_ADMIN_KEY")
        assert all(key["key"].startswith("${") for key in raw["auth"].get("keys") or ()), f"{source}: a literal proxy key"


def test_deployed_configs_decide_who_may_spend_the_upstream_keys():
    """Both bind 0.0.0.0 with upstream keys: k8s (a cluster-wide Service) asks callers for a proxy key,
    the compose sidecar (reachable from its network and the host's loopback only) says so explicitly."""
    k8s = check_config(only(K8S / "configmap.yaml")["data"]["sluice.yaml"], "configmap.yaml: sluice.yaml")
    compose = check_config((DEPLOY / "sluice.compose.yaml").read_text(), "sluice.compose.yaml")
    for config in (k8s, compose):
        assert config.server.host == option(IMAGE_CMD, "--host") == "0.0.0.0"
        assert any(p.api_key for p in config.providers)
        assert exposure_problem(config) is None
    assert [key.key for key in k8s.auth.keys] == ["value-of-sluice_proxy_key"] and not k8s.auth.allow_anonymous
    assert compose.auth.allow_anonymous and not compose.auth.keys
    assert not any(p.pass_client_key for p in k8s.providers + compose.providers), "Sluice holds the keys"


def test_the_default_config_passes_the_callers_key_to_openai_only():
    config = check_config((ROOT / "config" / "sluice.yaml").read_text(), "config/sluice.yaml")
    assert [p.name for p in config.providers if p.pass_client_key] == ["openai"]
    assert config.server.host == "127.0.0.1" and exposure_problem(config) is None


# -- Kubernetes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("deployment.yaml", [("apps/v1", "Deployment")]),
        ("service.yaml", [("v1", "Service")]),
        ("configmap.yaml", [("v1", "ConfigMap")]),
        ("secret.example.yaml", [("v1", "Secret")]),
        ("redis.yaml", [("apps/v1", "Deployment"), ("v1", "Service")]),
    ],
)
def test_k8s_manifest_kinds(name, expected):
    docs = documents(K8S / name)
    assert [(d["apiVersion"], d["kind"]) for d in docs] == expected
    assert all(d["metadata"]["name"] for d in docs)


def test_k8s_deployment_runs_three_replicas_as_non_root():
    deployment = only(K8S / "deployment.yaml")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    container = sluice_container()
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][bound].keys()


def test_k8s_probes_use_the_contract_endpoints():
    container = sluice_container()
    assert container_port(container, "http") == PORT
    liveness, readiness = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert liveness["path"] == HEALTH
    assert readiness["path"] == READY
    assert container_port(container, liveness["port"]) == container_port(container, readiness["port"]) == PORT


def test_k8s_keys_come_from_the_sluice_keys_secret():
    env = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in sluice_container()["env"] if "valueFrom" in item}
    assert K8S_KEY_VARIABLES <= env.keys()
    secret = only(K8S / "secret.example.yaml")
    for name in K8S_KEY_VARIABLES:
        assert env[name]["name"] == secret["metadata"]["name"] == "sluice-keys"
        assert env[name]["key"] in secret["stringData"]


def test_k8s_service_targets_the_container_port():
    service = only(K8S / "service.yaml")
    pod_labels = only(K8S / "deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == PORT
    assert container_port(sluice_container(), port["targetPort"]) == PORT


def test_k8s_configmap_is_the_config_the_image_loads():
    configmap = only(K8S / "configmap.yaml")
    pod = only(K8S / "deployment.yaml")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    (mount,) = [m for m in sluice_container()["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == "/app/config"
    # The image's CMD loads /app/config/sluice.yaml: a key of this ConfigMap.
    config_file = Path(option(IMAGE_CMD, "--config"))
    assert str(config_file.parent) == mount["mountPath"] and config_file.name in configmap["data"]
    config = check_config(configmap["data"][config_file.name], "configmap.yaml: sluice.yaml")
    # pricing_file is relative to the working directory /app.
    assert config.pricing_file == "config/prices.yaml" and "prices.yaml" in configmap["data"]
    assert yaml.safe_load(configmap["data"]["prices.yaml"])["models"]


def test_k8s_replicas_share_the_redis_service():
    config = parse_config(only(K8S / "configmap.yaml")["data"]["sluice.yaml"])
    assert config.cache.backend == "redis"
    url = urlsplit(config.cache.redis_url)
    deployment, service = of_kind(K8S / "redis.yaml", "Deployment"), of_kind(K8S / "redis.yaml", "Service")
    assert url.hostname == service["metadata"]["name"]
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"]
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (redis,) = pod["spec"]["containers"]
    assert container_port(redis, port["targetPort"]) == 6379
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_k8s_grace_period_outlasts_the_drain():
    config = parse_config(only(K8S / "configmap.yaml")["data"]["sluice.yaml"])
    pod = only(K8S / "deployment.yaml")["spec"]["template"]["spec"]
    pre_stop = sluice_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + config.server.drain_seconds
