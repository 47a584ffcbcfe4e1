"""Configuration: YAML with ${VAR} interpolation, validated into frozen dataclasses.

Validation collects every problem, each naming the field it concerns
(``providers[1].base_url: ...``), so one run of ``sluice check-config`` shows
everything to fix.
"""

from __future__ import annotations

import ipaddress
import importlib.util
import os
import re
import ssl
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from proxy.egress import forward_proxy, tls_context
from proxy.tokens import ENCODINGS

DEFAULT_CONFIG_PATH = "config/sluice.yaml"
DEFAULT_PRICING_FILE = "config/prices.yaml"  # relative to the config file's folder; may be absent
PROVIDER_TYPES = ("openai", "gemini", "ollama", "anthropic")
COMPRESSION_MODES = ("off", "safe", "aggressive")
CACHE_BACKENDS = ("memory", "redis")
SEMANTIC_MODES = ("off", "on", "opt-in")
SEMANTIC_THRESHOLD = 0.85  # cosine similarity; chosen on bench/data/semantic_pairs.jsonl (bench/semantic.py)

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """An invalid configuration; ``problems`` holds one line per bad field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 10 * 1024 * 1024
    drain_seconds: float = 10.0
    stream_keepalive_seconds: float = 15.0  # SSE comments while a stream's first event is slow (0: none)


@dataclass(frozen=True, slots=True)
class Timeout:
    connect: float = 5.0
    read: float = 300.0
    pool: float = 30.0  # waiting for a free connection: 503 upstream_busy after this
    total: float = 900.0  # one upstream call, end to end: 504 after this


@dataclass(frozen=True, slots=True)
class TLSConfig:
    verify: bool = True
    ca_file: str = ""  # added to the system's trust (and SSL_CERT_FILE's)
    cert_file: str = ""  # a client certificate, for upstreams that require one
    key_file: str = ""


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    type: str
    base_url: str
    api_key: str = ""
    pass_client_key: bool = False  # with no api_key: forward the caller's own credential (CONTRACT §6)
    timeout: Timeout = field(default_factory=Timeout)
    max_connections: int = 100
    http2: bool = True
    responses: bool = True  # openai type: the upstream serves /responses itself (false: Sluice bridges)
    stream_usage: bool = True  # openai type: ask for stream usage (false for servers that reject stream_options)
    proxy: str = ""  # forward proxy URL; empty: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True, slots=True)
class Target:
    """One place a request can be sent: a provider and its upstream model name."""

    provider: str
    model: str

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class ModelAlias:
    name: str
    targets: tuple[Target, ...]


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    default_provider: str | None = None


@dataclass(frozen=True, slots=True)
class EmbedderConfig:
    """``builtin``: the static model shipped in a wheel (proxy/cache/embedder.py); else a
    configured provider's embeddings endpoint and ``model``."""

    provider: str = "builtin"
    model: str = ""


@dataclass(frozen=True, slots=True)
class SemanticConfig:
    mode: str = "off"  # off | on | opt-in (X-Sluice-Semantic: on)
    threshold: float = SEMANTIC_THRESHOLD
    max_entries: int = 10000
    deterministic_only: bool = True  # temperature 0 and no tools
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = True
    backend: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    ttl_seconds: float = 3600.0
    max_entries: int = 10000
    max_bytes: int = 256 * 1024 * 1024
    hit_lane: bool = True  # extension: repeated hits answered before ASGI (proxy/hit_lane.py)
    near_copy: bool = True  # extension: with Redis, each process keeps what it read (proxy/cache/near.py)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)


@dataclass(frozen=True, slots=True)
class DedupConfig:
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    mode: str = "safe"
    trim_history: bool = True


@dataclass(frozen=True, slots=True)
class RetryConfig:
    max_attempts: int = 3
    initial_backoff_ms: float = 200.0
    max_backoff_ms: float = 8000.0
    retry_on_status: tuple[int, ...] = (408, 429, 500, 502, 503, 504)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5
    reset_timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    key: str
    rpm: int | None = None
    tpm: int | None = None
    budget_usd_per_day: float | None = None
    models: tuple[str, ...] | None = None  # allow-list: aliases, "provider/model", "provider/*"; None: any model
    semantic: bool | None = None  # this key's requests in (true) or out (false) of the semantic cache


@dataclass(frozen=True, slots=True)
class AuthConfig:
    keys: tuple[ApiKey, ...] = ()
    admin_key: str = ""
    allow_anonymous: bool = False  # serve a non-loopback host with no proxy keys (CONTRACT §6 "Exposure")


@dataclass(frozen=True, slots=True)
class ResponsesConfig:
    """State Sluice keeps for the Responses API when it bridges it (stored responses)."""

    ttl_seconds: float = 2592000.0
    max_entries: int = 10000


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """OpenTelemetry export without environment variables (proxy/tracing.py): each field stands for a
    standard ``OTEL_*`` variable, and a variable the environment sets wins over it. None: not set here."""

    enabled: bool | None = None  # OTEL_TRACES_EXPORTER otlp / none
    endpoint: str = ""  # OTEL_EXPORTER_OTLP_ENDPOINT: the collector's OTLP/HTTP base URL (/v1/traces is appended)
    service_name: str = ""  # OTEL_SERVICE_NAME (default sluice)
    capture_content: bool | None = None  # OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT
    sample_ratio: float | None = None  # OTEL_TRACES_SAMPLER parentbased_traceidratio with this argument


@dataclass(frozen=True, slots=True)
class Config:
    providers: tuple[ProviderConfig, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    models: tuple[ModelAlias, ...] = ()
    cache: CacheConfig = field(default_factory=CacheConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    responses: ResponsesConfig = field(default_factory=ResponsesConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    pricing_file: str | None = DEFAULT_PRICING_FILE
    pricing_file_required: bool = False  # named in the config: then it must exist
    context_windows: dict[str, int] = field(default_factory=dict)
    token_encodings: dict[str, str] = field(default_factory=dict)

    def provider(self, name: str) -> ProviderConfig | None:
        for provider in self.providers:
            if provider.name == name:
                return provider
        return None

    def alias_targets(self) -> frozenset[Target]:
        """Every target an alias names: the ones that always get their own breaker and metric labels."""
        return frozenset(target for alias in self.models for target in alias.targets)

    def masked(self) -> dict[str, Any]:
        """The resolved config as plain data with every secret replaced by ``***``."""
        data = asdict(self)
        for provider in data["providers"]:
            provider["api_key"] = _mask(provider["api_key"])
            provider["proxy"] = _mask_url_password(provider["proxy"])
        for key in data["auth"]["keys"]:
            key["key"] = _mask(key["key"])
        data["auth"]["admin_key"] = _mask(data["auth"]["admin_key"])
        data["cache"]["redis_url"] = _mask_url_password(data["cache"]["redis_url"])
        data["tracing"]["endpoint"] = _mask_url_password(data["tracing"]["endpoint"])
        return data


def exposure_problem(config: Config) -> str | None:
    """Why this config must not be served as is, or None (CONTRACT §6 "Exposure").

    A non-loopback host with no proxy keys lets anyone who can reach it spend
    the operator's upstream keys; that takes an explicit ``allow_anonymous``.
    Checked with the host as resolved after ``--host``.
    """
    if is_loopback(config.server.host) or config.auth.keys or config.auth.allow_anonymous:
        return None
    spenders = [p.name for p in config.providers if p.api_key]
    if not spenders:
        return None
    return (
        f"auth.keys: server.host {config.server.host!r} is not a loopback address and no proxy key is configured, "
        f"so anyone who reaches it would spend the api_key of {', '.join(spenders)}; "
        "add auth.keys, bind 127.0.0.1, or set auth.allow_anonymous: true"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable only from this machine."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _mask(secret: str) -> str:
    return "***" if secret else ""


def _mask_url_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


# -- loading -----------------------------------------------------------------


def resolve_path(path: str | None) -> str:
    """``--config`` wins, then ``$SLUICE_CONFIG``, then the default file."""
    return path or os.environ.get("SLUICE_CONFIG") or DEFAULT_CONFIG_PATH


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` from the environment."""
    environ = os.environ if env is None else env

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            return default or ""
        return value

    return _ENV_PATTERN.sub(replace, text)


def load_config(path: str | None = None) -> Config:
    path = resolve_path(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
    return parse_config(text, source=path, folder=Path(path).resolve().parent)


def parse_config(text: str, source: str = "<config>", folder: Path | None = None) -> Config:
    """``folder`` (the config file's) anchors relative paths such as ``pricing_file``."""
    try:
        data = yaml.safe_load(interpolate(text))
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping"])
    return _Validator(folder).config(data)


class _Validator:
    """Builds the dataclasses from plain data, recording a problem per bad field."""

    def __init__(self, folder: Path | None = None) -> None:
        self.problems: list[str] = []
        self.folder = folder

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    # -- primitive readers, each returning the default on a problem --

    def section(self, data: dict[str, Any], key: str, known: set[str]) -> dict[str, Any]:
        return self.mapping(data.get(key), key, known)

    def mapping(self, value: Any, path: str, known: set[str], problem: str = "must be a mapping") -> dict[str, Any]:
        """``value`` as a mapping of ``known`` fields; empty when absent or not a mapping (then a problem),
        so that every field reads as its default."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, problem)
            return {}
        self.unknown(value, path, known)
        return value

    def entries(self, data: list[Any], path: str, problem: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each mapping of the list ``data`` with its path (``path[i]``); any other entry is a problem."""
        for index, item in enumerate(data):
            if isinstance(item, dict):
                yield f"{path}[{index}]", item
            else:
                self.fail(f"{path}[{index}]", problem)

    def unique(self, name: str, seen: set[str], path: str, what: str) -> None:
        """Names that must differ (providers, aliases, keys): a second ``name`` is a problem."""
        if name in seen:
            self.fail(path, f"duplicate {what} {name!r}")
        seen.add(name)

    def unknown(self, data: dict[str, Any], path: str, known: set[str]) -> None:
        for name in data:
            if name not in known:
                self.fail(f"{path}.{name}" if path else str(name), "unknown field")

    def value(
        self,
        data: dict[str, Any],
        key: str,
        path: str,
        kind: type | tuple[type, ...],
        default: Any,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        if key not in data or data[key] is None:
            return default
        value = data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            self.fail(path, f"must be {_kind_name(kinds)}, got a boolean")
            return default
        if int in kinds and float not in kinds and isinstance(value, float):
            self.fail(path, "must be an integer")
            return default
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            self.fail(path, f"must be {_kind_name(kinds)}, got {type(value).__name__}")
            return default
        problem = check(value) if check else None
        if problem:
            self.fail(path, problem)
            return default
        return value

    def path(self, value: str) -> str:
        """A relative path resolves against the config file's folder (CONTRACT §2)."""
        if not value or self.folder is None or Path(value).is_absolute():
            return value
        return str(self.folder / value)

    # -- sections --

    def config(self, data: dict[str, Any]) -> Config:
        self.unknown(data, "", set(Config.__dataclass_fields__) - {"pricing_file_required"})
        server = self.server(self.section(data, "server", set(ServerConfig.__dataclass_fields__)))
        providers = self.providers(data.get("providers"))
        names = {p.name for p in providers}
        routing_data = self.section(data, "routing", {"default_provider"})
        default_provider = self.value(routing_data, "default_provider", "routing.default_provider", str, None)
        if default_provider is not None and names and default_provider not in names:
            self.fail("routing.default_provider", f"names no configured provider: {default_provider!r}")
        models = self.models(data.get("models"), names)
        self.pass_through_aliases(models, providers)
        cache = self.cache(self.section(data, "cache", set(CacheConfig.__dataclass_fields__)))
        embedder = cache.semantic.embedder.provider
        if embedder != "builtin" and names and embedder not in names:
            self.fail("cache.semantic.embedder.provider", f"names no configured provider: {embedder!r}")
        dedup_data = self.section(data, "dedup", {"enabled"})
        compression = self.compression(self.section(data, "compression", {"mode", "trim_history"}))
        retry = self.retry(self.section(data, "retry", set(RetryConfig.__dataclass_fields__)))
        breaker = self.breaker(self.section(data, "breaker", set(BreakerConfig.__dataclass_fields__)))
        auth = self.auth(self.section(data, "auth", set(AuthConfig.__dataclass_fields__)), names)
        responses = self.responses(self.section(data, "responses", set(ResponsesConfig.__dataclass_fields__)))
        tracing = self.tracing(self.section(data, "tracing", set(TracingConfig.__dataclass_fields__)))
        pricing_required = data.get("pricing_file") is not None
        if "pricing_file" in data and data["pricing_file"] is None:
            pricing_file = None  # an explicit null: the built-in price table alone
        else:
            pricing_file = self.path(self.value(data, "pricing_file", "pricing_file", str, DEFAULT_PRICING_FILE))
        context_windows = self.model_table(data.get("context_windows"), "context_windows", "token count", int, _positive)
        token_encodings = self.model_table(
            data.get("token_encodings"), "token_encodings", "tiktoken encoding", str, _one_of(ENCODINGS)
        )
        if self.problems:
            raise ConfigError(self.problems)
        return Config(
            providers=providers,
            server=server,
            routing=RoutingConfig(default_provider=default_provider),
            models=models,
            cache=cache,
            dedup=DedupConfig(enabled=self.value(dedup_data, "enabled", "dedup.enabled", bool, True)),
            compression=compression,
            retry=retry,
            breaker=breaker,
            auth=auth,
            responses=responses,
            tracing=tracing,
            pricing_file=pricing_file or None,
            pricing_file_required=pricing_required,
            context_windows=context_windows,
            token_encodings=token_encodings,
        )

    def server(self, data: dict[str, Any]) -> ServerConfig:
        d = ServerConfig()
        return ServerConfig(
            host=self.value(data, "host", "server.host", str, d.host, _non_empty),
            port=self.value(data, "port", "server.port", int, d.port, _port),
            max_body_bytes=self.value(data, "max_body_bytes", "server.max_body_bytes", int, d.max_body_bytes, _positive),
            drain_seconds=self.value(data, "drain_seconds", "server.drain_seconds", float, d.drain_seconds, _non_negative),
            stream_keepalive_seconds=self.value(
                data, "stream_keepalive_seconds", "server.stream_keepalive_seconds", float, d.stream_keepalive_seconds, _non_negative
            ),
        )

    def providers(self, data: Any) -> tuple[ProviderConfig, ...]:
        if data is None:
            self.fail("providers", "at least one provider is required")
            return ()
        if not isinstance(data, list) or not data:
            self.fail("providers", "must be a non-empty list")
            return ()
        result: list[ProviderConfig] = []
        seen: set[str] = set()
        for path, item in self.entries(data, "providers", "must be a mapping"):
            provider = self.provider(item, path)
            if provider is not None:
                self.unique(provider.name, seen, f"{path}.name", "provider name")
                result.append(provider)
        return tuple(result)

    def provider(self, data: dict[str, Any], path: str) -> ProviderConfig | None:
        self.unknown(data, path, set(ProviderConfig.__dataclass_fields__))
        before = len(self.problems)
        name = self.value(data, "name", f"{path}.name", str, None, _provider_name)
        if name is None and "name" not in data:
            self.fail(f"{path}.name", "is required")
        kind = self.value(data, "type", f"{path}.type", str, None, _one_of(PROVIDER_TYPES))
        if kind is None and "type" not in data:
            self.fail(f"{path}.type", "is required")
        base_url = self.value(data, "base_url", f"{path}.base_url", str, None, _url)
        if base_url is None and "base_url" not in data:
            base_url = _DEFAULT_BASE_URLS.get(kind or "")
        timeout_data = self.mapping(data.get("timeout"), f"{path}.timeout", set(Timeout.__dataclass_fields__), _TIMEOUT)
        timeout = Timeout(
            **{
                name: self.value(timeout_data, name, f"{path}.timeout.{name}", float, default, _positive)
                for name, default in asdict(Timeout()).items()
            }
        )
        tls_data = self.mapping(data.get("tls"), f"{path}.tls", set(TLSConfig.__dataclass_fields__), _TLS)
        tls = TLSConfig(
            verify=self.value(tls_data, "verify", f"{path}.tls.verify", bool, True),
            ca_file=self.value(tls_data, "ca_file", f"{path}.tls.ca_file", str, ""),
            cert_file=self.value(tls_data, "cert_file", f"{path}.tls.cert_file", str, ""),
            key_file=self.value(tls_data, "key_file", f"{path}.tls.key_file", str, ""),
        )
        if tls.key_file and not tls.cert_file:
            self.fail(f"{path}.tls.key_file", "needs cert_file")
        elif problem := _tls_problem(tls):
            self.fail(f"{path}.tls", problem)
        provider_fields = dict(
            api_key=self.value(data, "api_key", f"{path}.api_key", str, ""),
            pass_client_key=self.value(data, "pass_client_key", f"{path}.pass_client_key", bool, False),
            timeout=timeout,
            max_connections=self.value(data, "max_connections", f"{path}.max_connections", int, 100, _positive),
            http2=self.value(data, "http2", f"{path}.http2", bool, True),
            responses=self.value(data, "responses", f"{path}.responses", bool, True),
            stream_usage=self.value(data, "stream_usage", f"{path}.stream_usage", bool, True),
            proxy=self.value(data, "proxy", f"{path}.proxy", str, ""),
            tls=tls,
        )
        if len(self.problems) > before or name is None or kind is None or base_url is None:
            return None
        provider = ProviderConfig(name=name, type=kind, base_url=base_url.rstrip("/"), **provider_fields)
        if problem := _proxy_problem(provider):
            self.fail(path, problem)
            return None
        return provider

    def models(self, data: Any, provider_names: set[str]) -> tuple[ModelAlias, ...]:
        if data is None:
            return ()
        if not isinstance(data, list):
            self.fail("models", "must be a list of aliases")
            return ()
        aliases: list[ModelAlias] = []
        seen: set[str] = set()
        for path, item in self.entries(data, "models", "must be a mapping with name and targets"):
            self.unknown(item, path, {"name", "targets"})
            name = self.value(item, "name", f"{path}.name", str, None, _non_empty)
            if name is None:
                if "name" not in item:
                    self.fail(f"{path}.name", "is required")
                continue
            self.unique(name, seen, f"{path}.name", "alias")
            targets = self.targets(item.get("targets"), f"{path}.targets", provider_names)
            if targets:
                aliases.append(ModelAlias(name=name, targets=targets))
        return tuple(aliases)

    def pass_through_aliases(self, aliases: tuple[ModelAlias, ...], providers: tuple[ProviderConfig, ...]) -> None:
        """An alias may fall back across at most one ``pass_client_key`` provider: the caller's
        credential is meant for one upstream, and fallback would carry it to the other."""
        passing = {p.name for p in providers if p.pass_client_key}
        for index, alias in enumerate(aliases):
            names = sorted({target.provider for target in alias.targets} & passing)
            if len(names) > 1:
                self.fail(
                    f"models[{index}].targets",
                    f"alias {alias.name!r} has targets on {len(names)} pass_client_key providers ({', '.join(names)}): "
                    "a caller's credential for one would reach the other",
                )

    def targets(self, data: Any, path: str, provider_names: set[str]) -> tuple[Target, ...]:
        if not isinstance(data, list) or not data:
            self.fail(path, "must be a non-empty list of {provider, model}")
            return ()
        targets: list[Target] = []
        for item_path, item in self.entries(data, path, "must be a mapping with provider and model"):
            self.unknown(item, item_path, {"provider", "model"})
            provider = self.value(item, "provider", f"{item_path}.provider", str, None)
            model = self.value(item, "model", f"{item_path}.model", str, None, _non_empty)
            if provider is None or model is None:
                for key in ("provider", "model"):
                    if key not in item:
                        self.fail(f"{item_path}.{key}", "is required")
                continue
            if provider_names and provider not in provider_names:
                self.fail(f"{item_path}.provider", f"names no configured provider: {provider!r}")
                continue
            targets.append(Target(provider=provider, model=model))
        return tuple(targets)

    def cache(self, data: dict[str, Any]) -> CacheConfig:
        d = CacheConfig()
        return CacheConfig(
            enabled=self.value(data, "enabled", "cache.enabled", bool, d.enabled),
            backend=self.value(data, "backend", "cache.backend", str, d.backend, _one_of(CACHE_BACKENDS)),
            redis_url=self.value(data, "redis_url", "cache.redis_url", str, d.redis_url, _redis_url),
            ttl_seconds=self.value(data, "ttl_seconds", "cache.ttl_seconds", float, d.ttl_seconds, _positive),
            max_entries=self.value(data, "max_entries", "cache.max_entries", int, d.max_entries, _positive),
            max_bytes=self.value(data, "max_bytes", "cache.max_bytes", int, d.max_bytes, _positive),
            hit_lane=self.value(data, "hit_lane", "cache.hit_lane", bool, d.hit_lane),
            near_copy=self.value(data, "near_copy", "cache.near_copy", bool, d.near_copy),
            semantic=self.semantic(data.get("semantic")),
        )

    def semantic(self, data: Any) -> SemanticConfig:
        d = SemanticConfig()
        data = self.mapping(data, "cache.semantic", set(SemanticConfig.__dataclass_fields__))
        mode = data.get("mode")
        if isinstance(mode, bool):  # YAML reads a bare off/on as a boolean
            data = {**data, "mode": "on" if mode else "off"}
        embedder_fields = set(EmbedderConfig.__dataclass_fields__)
        embedder_data = self.mapping(data.get("embedder"), "cache.semantic.embedder", embedder_fields, _EMBEDDER)
        embedder = EmbedderConfig(
            provider=self.value(embedder_data, "provider", "cache.semantic.embedder.provider", str, d.embedder.provider),
            model=self.value(embedder_data, "model", "cache.semantic.embedder.model", str, d.embedder.model),
        )
        if embedder.provider != "builtin" and not embedder.model:
            self.fail("cache.semantic.embedder.model", "is required with a provider's embeddings")
        needs = ("numpy", "static_model") if embedder.provider == "builtin" else ("numpy",)
        if data.get("mode") not in (None, "off") and not all(importlib.util.find_spec(name) for name in needs):
            self.fail("cache.semantic.mode", "needs the semantic extra: pip install 'sluice[semantic]'")
        return SemanticConfig(
            mode=self.value(data, "mode", "cache.semantic.mode", str, d.mode, _one_of(SEMANTIC_MODES)),
            threshold=self.value(data, "threshold", "cache.semantic.threshold", float, d.threshold, _unit_interval),
            max_entries=self.value(data, "max_entries", "cache.semantic.max_entries", int, d.max_entries, _positive),
            deterministic_only=self.value(
                data, "deterministic_only", "cache.semantic.deterministic_only", bool, d.deterministic_only
            ),
            embedder=embedder,
        )

    def responses(self, data: dict[str, Any]) -> ResponsesConfig:
        d = ResponsesConfig()
        return ResponsesConfig(
            ttl_seconds=self.value(data, "ttl_seconds", "responses.ttl_seconds", float, d.ttl_seconds, _positive),
            max_entries=self.value(data, "max_entries", "responses.max_entries", int, d.max_entries, _positive),
        )

    def tracing(self, data: dict[str, Any]) -> TracingConfig:
        endpoint = self.value(data, "endpoint", "tracing.endpoint", str, "", lambda url: _url(url) if url else None)
        return TracingConfig(
            enabled=self.value(data, "enabled", "tracing.enabled", bool, None),
            endpoint=endpoint.rstrip("/"),
            service_name=self.value(data, "service_name", "tracing.service_name", str, ""),
            capture_content=self.value(data, "capture_content", "tracing.capture_content", bool, None),
            sample_ratio=self.value(data, "sample_ratio", "tracing.sample_ratio", float, None, _ratio),
        )

    def compression(self, data: dict[str, Any]) -> CompressionConfig:
        return CompressionConfig(
            mode=self.value(data, "mode", "compression.mode", str, "safe", _one_of(COMPRESSION_MODES)),
            trim_history=self.value(data, "trim_history", "compression.trim_history", bool, True),
        )

    def retry(self, data: dict[str, Any]) -> RetryConfig:
        d = RetryConfig()
        statuses = data.get("retry_on_status", list(d.retry_on_status))
        if not isinstance(statuses, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            self.fail("retry.retry_on_status", "must be a list of HTTP status codes")
            statuses = list(d.retry_on_status)
        initial = self.value(data, "initial_backoff_ms", "retry.initial_backoff_ms", float, d.initial_backoff_ms, _non_negative)
        maximum = self.value(data, "max_backoff_ms", "retry.max_backoff_ms", float, d.max_backoff_ms, _non_negative)
        if maximum < initial:
            self.fail("retry.max_backoff_ms", "must be at least retry.initial_backoff_ms")
        return RetryConfig(
            max_attempts=self.value(data, "max_attempts", "retry.max_attempts", int, d.max_attempts, _positive),
            initial_backoff_ms=initial,
            max_backoff_ms=maximum,
            retry_on_status=tuple(statuses),
        )

    def breaker(self, data: dict[str, Any]) -> BreakerConfig:
        d = BreakerConfig()
        return BreakerConfig(
            failure_threshold=self.value(data, "failure_threshold", "breaker.failure_threshold", int, d.failure_threshold, _positive),
            reset_timeout_seconds=self.value(
                data, "reset_timeout_seconds", "breaker.reset_timeout_seconds", float, d.reset_timeout_seconds, _positive
            ),
        )

    def auth(self, data: dict[str, Any], provider_names: set[str]) -> AuthConfig:
        items = data.get("keys") or []
        keys: list[ApiKey] = []
        if not isinstance(items, list):
            self.fail("auth.keys", "must be a list")
            items = []
        names: set[str] = set()
        for path, item in self.entries(items, "auth.keys", "must be a mapping with name and key"):
            self.unknown(item, path, set(ApiKey.__dataclass_fields__))
            name = self.value(item, "name", f"{path}.name", str, None, _non_empty)
            key = self.value(item, "key", f"{path}.key", str, None)
            if name is None or not key:
                self.fail(f"{path}.{'name' if name is None else 'key'}", "is required and must not be empty")
                continue
            self.unique(name, names, f"{path}.name", "key name")
            keys.append(
                ApiKey(
                    name=name,
                    key=key,
                    rpm=self.value(item, "rpm", f"{path}.rpm", int, None, _positive),
                    tpm=self.value(item, "tpm", f"{path}.tpm", int, None, _positive),
                    budget_usd_per_day=self.value(
                        item, "budget_usd_per_day", f"{path}.budget_usd_per_day", float, None, _non_negative
                    ),
                    models=self.allowed_models(item.get("models"), f"{path}.models", provider_names),
                    semantic=self.value(item, "semantic", f"{path}.semantic", bool, None),
                )
            )
        return AuthConfig(
            keys=tuple(keys),
            admin_key=self.value(data, "admin_key", "auth.admin_key", str, ""),
            allow_anonymous=self.value(data, "allow_anonymous", "auth.allow_anonymous", bool, False),
        )

    def allowed_models(self, data: Any, path: str, provider_names: set[str]) -> tuple[str, ...] | None:
        """A key's allow-list; ``provider/*`` must name a configured provider."""
        if data is None:
            return None
        if not isinstance(data, list) or not all(isinstance(m, str) and m.strip() for m in data):
            self.fail(path, "must be a list of model names (an alias, provider/model or provider/*)")
            return None
        for index, model in enumerate(data):
            prefix, slash, rest = model.partition("/")
            if slash and rest == "*" and provider_names and prefix not in provider_names:
                self.fail(f"{path}[{index}]", f"names no configured provider: {prefix!r}")
        return tuple(data)

    def model_table(self, data: Any, key: str, what: str, kind: type, check: Callable[[Any], str | None]) -> dict[str, Any]:
        """A mapping of model name (or prefix) to a value, as ``context_windows`` and ``token_encodings`` are."""
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.fail(key, f"must be a mapping of model name to {what}")
            return {}
        result: dict[str, Any] = {}
        for model in data:
            value = self.value(data, model, f"{key}.{model}", kind, None, check)
            if value is not None:
                result[str(model)] = value
        return result

_TIMEOUT = "must be a mapping with connect, read, pool and total"
_TLS = "must be a mapping with verify, ca_file, cert_file and key_file"
_EMBEDDER = "must be a mapping with provider and model"

_DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "ollama": "http://127.0.0.1:11434",
    "anthropic": "https://api.anthropic.com/v1",
}


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list", dict: "a mapping"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _provider_name(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if "/" in value:
        return "must not contain '/' (it separates provider and model)"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number (0-65535)"


def _url(value: str) -> str | None:
    if not re.match(r"^https?://[^/\s]+", value):
        return f"must be an http:// or https:// URL, got {value!r}"
    return None


def _proxy_problem(provider: ProviderConfig) -> str | None:
    """Why the forward proxy this provider would use (its ``proxy``, else the environment's) cannot be used."""
    try:
        forward_proxy(provider)
    except ValueError as exc:
        return str(exc)
    return None


def _tls_problem(tls: TLSConfig) -> str | None:
    """Why the TLS files cannot be used, loading them as the upstream clients will."""
    if not (tls.ca_file or tls.cert_file):
        return None
    try:
        tls_context(tls)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot load ca_file/cert_file/key_file: {exc}"
    return None


def _redis_url(value: str) -> str | None:
    if not re.match(r"^(redis|rediss|unix)://", value):
        return "must be a redis://, rediss:// or unix:// URL"
    return None


def _ratio(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be from 0 to 1"


def _unit_interval(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be above 0 and at most 1"


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}; got {value!r}"

    return check
