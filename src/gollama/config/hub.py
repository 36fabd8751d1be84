"""The hub's settings."""

from __future__ import annotations

from dataclasses import dataclass

from gollama._values import (
    boolean,
    existing_file,
    http_url,
    non_negative_int,
    one_of,
    port_number,
    positive_seconds,
    redis_url,
    text,
)
from gollama.config.option import option
from gollama.config.server import ServerConfig
from gollama.hub.models import checked_aliases
from gollama.hub.placement import checked_pins
from gollama.hub.routing import POLICIES


@dataclass(frozen=True)
class HubConfig(ServerConfig):
    host: str = option("0.0.0.0", "--host", "GOLLAMA_HOST", text, "address the hub listens on")
    port: int = option(9000, "--port", "GOLLAMA_PORT", port_number, "port the hub listens on")
    redis_url: str | None = option(
        None,
        "--redis",
        "GOLLAMA_REDIS_URL",
        redis_url,
        "Redis shared by several hubs (redis://HOST:PORT/DB): workers serve every hub, key "
        "limits, stored responses and cache affinity hold across hubs (default: this hub "
        "alone, state in memory; see README, Several hubs)",
        metavar="URL",
    )
    advertise_url: str | None = option(
        None,
        "--advertise",
        "GOLLAMA_HUB_ADVERTISE_URL",
        http_url,
        "with --redis: URL workers use to reach this hub (default: http://HOST:PORT, with this "
        "machine's address towards Redis when HOST is 0.0.0.0)",
        metavar="URL",
    )
    queue_size: int = option(
        5000,
        "--queue-size",
        "GOLLAMA_QUEUE_SIZE",
        non_negative_int,
        "requests that may wait for a free slot; one more is refused with 429",
    )
    queue_timeout: float = option(
        60.0,
        "--queue-timeout",
        "GOLLAMA_QUEUE_TIMEOUT",
        positive_seconds,
        "seconds a request may wait for a free slot before it gets a 503",
    )
    concurrent_workers: int = option(
        0,
        "--concurrent-workers",
        "GOLLAMA_CONCURRENT_WORKERS",
        non_negative_int,
        "most requests in flight on all workers together (the original's job processors); "
        "0 = no cap beyond the workers' slots",
    )
    max_retries: int = option(
        3,
        "--max-retries",
        "GOLLAMA_MAX_RETRIES",
        non_negative_int,
        "retries on another worker when an attempt fails before the first byte reached the client",
    )
    default_max_tokens: int = option(
        100,
        "--default-max-tokens",
        "GOLLAMA_DEFAULT_MAX_TOKENS",
        non_negative_int,
        "max_tokens for /chat requests (the original simple API) that set none; 0 = leave unset",
    )
    api_max_tokens: int = option(
        0,
        "--api-max-tokens",
        "GOLLAMA_API_MAX_TOKENS",
        non_negative_int,
        "token limit for requests to the OpenAI, Anthropic, Responses and llama.cpp APIs that "
        "set none; 0 = none (llama-server generates to the end, as when called directly)",
    )
    model_aliases: str = option(
        "",
        "--model-aliases",
        "GOLLAMA_MODEL_ALIASES",
        checked_aliases,
        "model names clients may use for served models, as pattern=model pairs with shell "
        "wildcards, e.g. 'claude-*=coder,gpt-*=chat' (see README, Models)",
        metavar="PATTERN=MODEL,...",
    )
    default_model: str | None = option(
        None,
        "--default-model",
        "GOLLAMA_DEFAULT_MODEL",
        text,
        "the served model for names nothing else matches (default: with one served model, "
        "that one; with several, such a name gets 404)",
        metavar="MODEL",
    )
    pin_models: str = option(
        "",
        "--pin-models",
        "GOLLAMA_PIN_MODELS",
        checked_pins,
        "router-mode workers: models kept loaded on N workers each, as name=N pairs, e.g. "
        "'chat=2,embed=1' (see README, Many models per machine)",
        metavar="MODEL=N,...",
    )
    model_idle_seconds: float = option(
        30.0,
        "--model-idle-seconds",
        "GOLLAMA_MODEL_IDLE_SECONDS",
        positive_seconds,
        "router-mode workers: a model unused this long on a worker may be unloaded there to "
        "make room for another model's extra copy (a model nobody has loaded may take the "
        "place of any idle one)",
    )
    model_load_timeout: float = option(
        300.0,
        "--model-load-timeout",
        "GOLLAMA_MODEL_LOAD_TIMEOUT",
        positive_seconds,
        "router-mode workers: longest wait for a model to load on a worker",
    )
    cors_origins: str = option(
        "",
        "--cors-origins",
        "GOLLAMA_CORS_ORIGINS",
        text,
        "comma-separated origins whose browser apps may call the hub (CORS; '*' for any); "
        "default: none, no CORS answers",
        metavar="ORIGINS",
    )
    responses_ttl: float = option(
        3600.0,
        "--responses-ttl",
        "GOLLAMA_RESPONSES_TTL",
        positive_seconds,
        "seconds the hub keeps a relayed Responses API response (since last used), for "
        "previous_response_id",
    )
    responses_max_bytes: int = option(
        64 * 1024 * 1024,
        "--responses-max-bytes",
        "GOLLAMA_RESPONSES_MAX_BYTES",
        non_negative_int,
        "most bytes of kept Responses API responses, in all; the least recently used go "
        "first; 0 = keep none",
    )
    policy: str = option(
        "cache_aware",
        "--policy",
        "GOLLAMA_POLICY",
        one_of(*POLICIES),
        f"how a worker is chosen: {', '.join(POLICIES)} (see README, Routing)",
    )
    request_timeout: float = option(
        600.0,
        "--request-timeout",
        "GOLLAMA_REQUEST_TIMEOUT",
        positive_seconds,
        "total seconds a request may take, queueing, retries and streaming included",
    )
    connect_timeout: float = option(
        3.0,
        "--connect-timeout",
        "GOLLAMA_CONNECT_TIMEOUT",
        positive_seconds,
        "seconds to open a connection to a worker",
    )
    read_timeout: float = option(
        120.0,
        "--read-timeout",
        "GOLLAMA_READ_TIMEOUT",
        positive_seconds,
        "longest silence of a worker's stream once it started; until its first bytes an "
        "answer is bounded by the request timeout and the worker's health",
    )
    heartbeat_interval: float = option(
        2.0,
        "--heartbeat-interval",
        "GOLLAMA_HEARTBEAT_INTERVAL",
        positive_seconds,
        "seconds between worker heartbeats; a worker silent for 3 intervals is offline",
    )
    api_keys: str = option(
        "",
        "--api-keys",
        "GOLLAMA_API_KEYS",
        text,
        "comma-separated client API keys (16+ characters each); with any key (here or in "
        "--api-keys-file) the inference API needs 'Authorization: Bearer KEY'; prefer the "
        "environment or the file to the flag",
        metavar="KEYS",
    )
    api_keys_file: str | None = option(
        None,
        "--api-keys-file",
        "GOLLAMA_API_KEYS_FILE",
        existing_file,
        "file of client API keys, one a line: KEY [name=NAME] [concurrent=N] [rpm=N] "
        "[weight=W] [priority=interactive|batch]",
        metavar="PATH",
    )
    key_concurrency: int = option(
        0,
        "--key-concurrency",
        "GOLLAMA_KEY_CONCURRENCY",
        non_negative_int,
        "requests one API key may have in flight at once; more get 429 (0 = no limit)",
    )
    key_rpm: int = option(
        0,
        "--key-rpm",
        "GOLLAMA_KEY_RPM",
        non_negative_int,
        "requests one API key may start per minute; more get 429 (0 = no limit)",
    )
    queue_order: str = option(
        "fair",
        "--queue-order",
        "GOLLAMA_QUEUE_ORDER",
        one_of("fair", "arrival"),
        "who of the waiters gets a freed slot: fair = the API key that had the least slot time "
        "for its weight (interactive before batch), arrival = the oldest waiter (see README, "
        "Fair share)",
    )
    priority_aging: float = option(
        30.0,
        "--priority-aging",
        "GOLLAMA_PRIORITY_AGING",
        positive_seconds,
        "seconds a batch request waits before it competes with interactive ones",
    )
    tenant_header: str | None = option(
        None,
        "--tenant-header",
        "GOLLAMA_TENANT_HEADER",
        text,
        "without API keys: the request header whose value tells tenants apart for the fair "
        "share (e.g. X-User; default: all requests are one tenant)",
        metavar="NAME",
    )
    admin_key: str | None = option(
        None,
        "--admin-key",
        "GOLLAMA_ADMIN_KEY",
        text,
        "key (16+ characters) for /metrics, /stats and /dashboard, as a Bearer token or a "
        "browser login's password (default: those stay open)",
        metavar="SECRET",
    )
    allow_open_registration: bool = option(
        False,
        "--allow-open-registration",
        "GOLLAMA_ALLOW_OPEN_REGISTRATION",
        boolean,
        "without a worker token, accept worker registrations from any address, not only from "
        "this machine (loopback); for closed networks only: whoever registers receives prompts",
    )
    worker_ca: str | None = option(
        None,
        "--worker-ca",
        "GOLLAMA_WORKER_CA",
        existing_file,
        "CA certificates (PEM) to verify workers served over HTTPS (default: the system's)",
        metavar="PEM",
    )
    max_tokens_limit: int = option(
        32768,
        "--max-tokens-limit",
        "GOLLAMA_MAX_TOKENS_LIMIT",
        non_negative_int,
        "most tokens a reply may have: a request asking for more (max_tokens, "
        "max_completion_tokens, max_output_tokens, n_predict) is served with this many, as "
        "llama-server serves a limit past its context (0 = no cap)",
    )
    max_messages: int = option(
        1024,
        "--max-messages",
        "GOLLAMA_MAX_MESSAGES",
        non_negative_int,
        "most messages in one chat request; more get 400 (0 = no cap)",
    )
