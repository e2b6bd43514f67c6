"""Settings for the chat service: one module, driven by the environment.

Without DATABASE_URL and REDIS_URL the service runs on the embedded default
(SQLite, local-memory cache, the process's own bus). With them it runs in
production shape (PostgreSQL with psycopg's pool, Redis for cache, sessions and
the broadcast bus). See .env.example for every variable and its default.
"""

import os
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env", override=False)


def env(name, default=None, cast=str):
    """Read one setting from the environment, cast to the default's kind."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if cast is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if cast is list:
        return [item.strip() for item in raw.split(",") if item.strip()]
    return cast(raw)


DEBUG = env("DEBUG", False, bool)
DATABASE_URL = env("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
REDIS_URL = env("REDIS_URL")
# Production shape: a real database server and Redis. It must never run on the
# development key.
PRODUCTION = not DATABASE_URL.startswith("sqlite") and bool(REDIS_URL)

# The development key is public (it is in this file): it signs sessions, so only
# the embedded default (SQLite) or DEBUG may run on it. Any other database with
# DEBUG off is a deployment, with or without Redis. DEBUG with such a database
# warns on stderr (logging is not configured yet while settings are read).
SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY:
    if not DATABASE_URL.startswith("sqlite"):
        if not DEBUG:
            raise ImproperlyConfigured(
                "SECRET_KEY is required with DEBUG off and a database other than "
                "SQLite. Set SECRET_KEY in the environment."
            )
        sys.stderr.write(
            "WARNING: DEBUG is on and SECRET_KEY is not set: running on the public "
            "development key with a real database. Never do this in production.\n"
        )
    SECRET_KEY = "dev-insecure-key-do-not-use-in-production-" + "x" * 20

ALLOWED_HOSTS = env("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"], list)
CSRF_TRUSTED_ORIGINS = env("CSRF_TRUSTED_ORIGINS", [], list)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "accounts",
    "projects",
    "chat",
    "django_prometheus",
    "chatsite.apps.ChatsiteConfig",
]

MIDDLEWARE = [
    # Outermost: the request id is bound to every log line below it, and the
    # metrics time everything (docs/OPERATIONS.md).
    "chatsite.logging.RequestIdMiddleware",
    "chatsite.metrics.PrometheusBeforeMiddleware",
    "chatsite.metrics.MetricsMiddleware",
    "chatsite.middleware.ApiErrorShapeMiddleware",
    "chatsite.middleware.DatabaseUnavailableMiddleware",
    "chatsite.compression.CompressionMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "chat.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "chatsite.profiling.ProfilingMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "chatsite.metrics.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
WSGI_APPLICATION = "chatsite.wsgi.application"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # The sidebar's list, read only when a page shows it (lazy).
                "projects.context_processors.sidebar",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
# The guide's pool variables mapped onto Django's psycopg pool. CONN_MAX_AGE
# stays 0: persistent connections leak under ASGI; the pool keeps them instead.
DB_POOL_SIZE = env("DB_POOL_SIZE", 10, int)
DB_MAX_OVERFLOW = env("DB_MAX_OVERFLOW", 20, int)
DB_POOL_TIMEOUT = env("DB_POOL_TIMEOUT", 30, float)
DB_POOL_RECYCLE = env("DB_POOL_RECYCLE", 3600, float)
DB_POOL_ENABLED = env("DB_POOL_ENABLED", True, bool)
# Seconds to establish a connection. psycopg's default (130 s) let connection
# attempts caught in a partition (PostgreSQL accepting but never answering) hold
# the pool's three connection workers long after it healed: no connection, only
# 503s (tests/test_reliability_faults.py, PostgreSQL blackhole).
DB_CONNECT_TIMEOUT = env("DB_CONNECT_TIMEOUT", 5, int)
# Prepared statements: server-side parameter binding, and psycopg prepares a
# statement a connection has run five times, so PostgreSQL stops planning it on
# every call (the project list's statement spent longer in the planner than
# running: docs/PERFORMANCE.md). Off behind a pooler in transaction mode.
# DB_POOLER=pgbouncer: DATABASE_URL is PgBouncer in transaction mode. Debian's
# PgBouncer 1.18 cannot carry psycopg's prepared statements ("prepared statement
# ... already exists" once a server connection serves two clients), so they
# default off and turning them on is refused; server-side cursors are off too
# (a cursor lives in a server connection only for its transaction).
DB_POOLER = env("DB_POOLER", "").lower()
if DB_POOLER not in ("", "pgbouncer"):
    raise ImproperlyConfigured("DB_POOLER must be empty or pgbouncer.")
DB_PREPARED_STATEMENTS = env("DB_PREPARED_STATEMENTS", DB_POOLER != "pgbouncer", bool)
if DB_POOLER == "pgbouncer" and DB_PREPARED_STATEMENTS:
    raise ImproperlyConfigured(
        "DB_PREPARED_STATEMENTS=true cannot work behind PgBouncer in transaction mode "
        "(DB_POOLER=pgbouncer): set DB_PREPARED_STATEMENTS=false.")

# conn_health_checks also makes the pool check a connection before lending it
# (the guide's pool_pre_ping).
_db = dj_database_url.parse(DATABASE_URL, conn_max_age=0, conn_health_checks=True)
if _db["ENGINE"] == "django.db.backends.postgresql":
    _db.setdefault("OPTIONS", {})
    _connection_options = {
        "connect_timeout": DB_CONNECT_TIMEOUT,
        # A dead peer on a real network: keepalives notice it on an idle
        # connection, tcp_user_timeout (ms) when sent data stays unacknowledged,
        # instead of the kernel's ~15 minutes of retransmissions.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": 30000,
    }
    for _name, _value in _connection_options.items():  # DATABASE_URL's ?options win
        _db["OPTIONS"].setdefault(_name, _value)
    if DB_PREPARED_STATEMENTS:
        _db["OPTIONS"].setdefault("server_side_binding", True)
        _db["OPTIONS"].setdefault("prepare_threshold", 5)
    if DB_POOL_ENABLED:
        _db["OPTIONS"]["pool"] = {
            "min_size": min(2, DB_POOL_SIZE),
            "max_size": DB_POOL_SIZE + DB_MAX_OVERFLOW,
            "timeout": DB_POOL_TIMEOUT,
            "max_lifetime": DB_POOL_RECYCLE,
        }
    _db["TEST"] = {"NAME": env("TEST_DATABASE_NAME", "test_chat")}
    _db["DISABLE_SERVER_SIDE_CURSORS"] = bool(DB_POOLER)
else:
    _db["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
DATABASES = {"default": _db}
# Streaming replicas for the reads that tolerate them (chatsite/dbrouter.py;
# docs/SCALING.md, "PostgreSQL replicas and PgBouncer"): aliases replica1..N,
# the primary's options with a short pool wait (REPLICA_CONNECT_TIMEOUT seconds;
# connect_timeout its whole seconds, at least 1), so a replica that goes down
# costs one read that wait, then is skipped for REPLICA_RETRY_SECONDS. Empty:
# no router, every read on DATABASE_URL.
DATABASE_REPLICA_URLS = env("DATABASE_REPLICA_URLS", [], list)
REPLICA_MAX_LAG_MS = env("REPLICA_MAX_LAG_MS", 500, int)
REPLICA_RETRY_SECONDS = env("REPLICA_RETRY_SECONDS", 5.0, float)
REPLICA_CONNECT_TIMEOUT = env("REPLICA_CONNECT_TIMEOUT", 0.5, float)
if DATABASE_REPLICA_URLS:
    if _db["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured("DATABASE_REPLICA_URLS needs a PostgreSQL DATABASE_URL.")
    for _number, _url in enumerate(DATABASE_REPLICA_URLS, 1):
        _replica = dj_database_url.parse(_url, conn_max_age=0, conn_health_checks=True)
        _replica.setdefault("OPTIONS", {})
        for _name, _value in _db["OPTIONS"].items():
            _replica["OPTIONS"].setdefault(_name, _value)
        _replica["OPTIONS"]["connect_timeout"] = max(1, round(REPLICA_CONNECT_TIMEOUT))
        if "pool" in _db["OPTIONS"]:
            _replica["OPTIONS"]["pool"] = dict(_db["OPTIONS"]["pool"],
                                               timeout=REPLICA_CONNECT_TIMEOUT)
        _replica["DISABLE_SERVER_SIDE_CURSORS"] = _db["DISABLE_SERVER_SIDE_CURSORS"]
        # Tests: the alias is the test database's own connection.
        _replica["TEST"] = {"MIRROR": "default"}
        DATABASES[f"replica{_number}"] = _replica
    DATABASE_ROUTERS = ["chatsite.dbrouter.ReplicaRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["accounts.backends.CachedModelBackend"]
# Seconds a revoked cache entry stays marked so that no reader refills it with
# what it read before the revocation (chatsite/retired.py).
REFILL_GUARD_SECONDS = env("REFILL_GUARD_SECONDS", 10, int)

# --- Cache and sessions (no channel layer: sockets get changes from chat.realtime) --
CACHE_TTL = env("CACHE_TTL", 300, int)
# Off only to measure the uncached path (bench/http_bench.py).
CACHE_HOT_READS = env("CACHE_HOT_READS", True, bool)
# The hot reads (first history page, project list) answered before Django's request stack
# (chatsite/hotpath.py); off: every request goes through Django.
HOT_PATH = env("HOT_PATH", True, bool)
# Server processes: the garbage collector's thresholds (gen0,gen1,gen2), set
# after start-up with what is loaded by then frozen (chatsite/runtime.py);
# "off": Python's defaults, nothing frozen.
_gc_threshold = env("GC_THRESHOLD", "10000,10,100")
GC_THRESHOLD = ([] if _gc_threshold.strip().lower() == "off"
                else [int(x) for x in _gc_threshold.split(",")])
# Deployments sharing one Redis database keep their keys apart with a prefix.
CACHE_KEY_PREFIX = env("CACHE_KEY_PREFIX", "")
# REDIS_URL=redis+cluster://host:port[,host:port…]: cache and sessions on a Redis
# Cluster through django-redis's client on redis-py's RedisCluster (reads of
# several keys go one MGET per hash slot: chatsite/scaleout/redis_client.py),
# the bus on sharded pub/sub (chat/realtime/cluster_bus.py); docs/SCALING.md.
REDIS_CLUSTER = bool(REDIS_URL) and REDIS_URL.startswith(("redis+cluster://",
                                                          "rediss+cluster://"))
_REDIS_CLIENT = ({"CLIENT_CLASS": "chatsite.scaleout.redis_client.ClusterClient",
                  "CONNECTION_FACTORY": "chatsite.scaleout.redis_client.ClusterConnectionFactory"}
                 if REDIS_CLUSTER else {"CLIENT_CLASS": "django_redis.client.DefaultClient"})
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "chatsite.cache.SharedClientRedisCache",
            "LOCATION": REDIS_URL,
            "TIMEOUT": CACHE_TTL,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            "OPTIONS": {
                **_REDIS_CLIENT,
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 1,
            },
        },
        # Sessions: a Redis outage degrades to the database (cached_db)
        # instead of failing the request.
        "sessions": {
            "BACKEND": "chatsite.cache.SharedClientRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            "OPTIONS": {
                **_REDIS_CLIENT,
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 1,
                "IGNORE_EXCEPTIONS": True,
            },
        },
    }
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
    SESSION_ENGINE = "accounts.session_store"  # cached_db, loaded with the user's stamp
    SESSION_CACHE_ALIAS = "sessions"
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "TIMEOUT": CACHE_TTL,
        }
    }
    SESSION_ENGINE = "accounts.session_store"  # cached_db, loaded with the user's stamp

# --- Chat behaviour -------------------------------------------------------------
MESSAGE_MAX_LENGTH = env("MESSAGE_MAX_LENGTH", 10000, int)
BROADCAST_MAX_BATCH = env("BROADCAST_MAX_BATCH", 10, int)
BROADCAST_MAX_WAIT_MS = env("BROADCAST_MAX_WAIT_MS", 100, int)
# How long a batch waits for company at most (<= BROADCAST_MAX_WAIT_MS); see
# docs/REALTIME.md for the measured trade-off between frames and latency.
BROADCAST_LINGER_MS = env("BROADCAST_LINGER_MS", 25, int)
# ... and waits only when sending it alone would cost this many socket writes
# per second in the process (its sockets in the project / the time since the
# change before): 500 sockets linger for changes under 100 ms apart, 10 only
# for changes under 2 ms apart (docs/REALTIME.md).
BROADCAST_LINGER_MIN_WRITES = env("BROADCAST_LINGER_MIN_WRITES", 5000, int)
REPLAY_LIMIT = env("REPLAY_LIMIT", 500, int)
# Where browsers open sockets when a separate server carries them (`make serve`:
# HTTP on granian, sockets on uvicorn one port up), e.g. ws://chat.example:8001.
# Empty: the page's own origin (one server for both, or a proxy routing /ws/).
WS_PUBLIC_URL = env("WS_PUBLIC_URL", "").rstrip("/")
if WS_PUBLIC_URL and not WS_PUBLIC_URL.startswith(("ws://", "wss://")):
    raise ImproperlyConfigured("WS_PUBLIC_URL must start with ws:// or wss://")
# Pub/sub channels are shared by every database number of a Redis server: two
# deployments (or test runs) on one Redis must not hear each other.
BUS_PREFIX = env("BUS_PREFIX", f"chat:{DATABASES['default'].get('NAME', 'db')}")
# User-targeted socket events (/ws/me/: a read pointer moved, a membership
# began or ended) travel on Channels' layer, one group per user
# (chat.realtime.me); a project's changes keep their hub. channels-redis in
# production shape, the process's memory on the embedded default.
# channels-redis has no Redis Cluster client (it shards over a list of hosts
# itself): CHANNEL_REDIS_URLS, standalone Redis servers (comma separated), by
# default REDIS_URL; required when REDIS_URL is a cluster.
CHANNEL_REDIS_URLS = env("CHANNEL_REDIS_URLS", [], list) or (
    [REDIS_URL] if REDIS_URL and not REDIS_CLUSTER else [])
if REDIS_CLUSTER and not CHANNEL_REDIS_URLS:
    raise ImproperlyConfigured(
        "REDIS_URL is a Redis Cluster: set CHANNEL_REDIS_URLS to one or more standalone "
        "Redis servers (redis://host:port/db, comma separated) for the channel layer; "
        "channels-redis cannot use a cluster (docs/SCALING.md, \"Redis Cluster\").")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # No read timeout: channels-redis waits on BRPOP for 5 s, and redis-py
            # 8's default 5 s socket timeout would kill an idle /ws/me/ consumer.
            "CONFIG": {"hosts": [{"address": url, "socket_timeout": None}
                                 for url in CHANNEL_REDIS_URLS],
                       "prefix": f"{BUS_PREFIX}:layer"},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
WS_MAX_FRAME_BYTES = env("WS_MAX_FRAME_BYTES", 65536, int)
WS_SEND_QUEUE_FRAMES = env("WS_SEND_QUEUE_FRAMES", 256, int)
# Where the socket server writes frames itself (chatsite.websocket): a client
# with more than this many bytes unread in its transport is closed with 4008.
WS_SEND_BUFFER_BYTES = env("WS_SEND_BUFFER_BYTES", 1 << 20, int)
# Redis connections per socket-server event loop (the bus's pool; its
# subscription holds one): connects beyond it wait for one.
WS_REDIS_CONNECTIONS = env("WS_REDIS_CONNECTIONS", 16, int)
WS_RATE_PER_SECOND = env("WS_RATE_PER_SECOND", 10.0, float)
WS_RATE_BURST = env("WS_RATE_BURST", 30, int)
# Messages one user may send per SEND_RATE_WINDOW_SECONDS, HTTP and sockets together
# (chat.actions.validate_send_rate); over it: 429 / rate_limited. 0: no limit.
SEND_RATE_PER_USER = env("SEND_RATE_PER_USER", 60, int)
# The window of SEND_RATE_PER_USER: fixed windows counted in Redis; fails open when
# Redis is down (a chat send must not fail because of its limiter).
SEND_RATE_WINDOW_SECONDS = env("SEND_RATE_WINDOW_SECONDS", 10, int)
# Open sockets per user across every process (close 4429 beyond): a flood guard.
WS_MAX_SOCKETS_PER_USER = env("WS_MAX_SOCKETS_PER_USER", 30, int)
# Threads per socket-server process for blocking publishes off the event loop
# (presence and typing, a Redis round trip each). The sockets' database work
# (sends, replays, access checks) runs on Channels' one database thread.
WS_PUBLISH_THREADS = env("WS_PUBLISH_THREADS", 16, int)
LOGIN_FAILURE_LIMIT = env("LOGIN_FAILURE_LIMIT", 5, int)
# Proxies in front of the app whose X-Forwarded-For entries are believed (0: the
# header is ignored); sign-in failures are counted per client address behind them.
TRUSTED_PROXY_COUNT = env("TRUSTED_PROXY_COUNT", 0, int)

# --- Performance knobs of the guide (used by later layers) ---------------------
SLOW_QUERY_THRESHOLD = env("SLOW_QUERY_THRESHOLD", 0.1, float)
SQL_ECHO = env("SQL_ECHO", False, bool)
ENABLE_COMPRESSION = env("ENABLE_COMPRESSION", True, bool)
COMPRESSION_LEVEL = env("COMPRESSION_LEVEL", 5, int)
COMPRESSION_MIN_SIZE = env("COMPRESSION_MIN_SIZE", 1000, int)
ENABLE_METRICS = env("ENABLE_METRICS", True, bool)
METRICS_PORT = env("METRICS_PORT", 9090, int)

# --- Observability: metrics, structured logs, profiling (docs/OPERATIONS.md) -----
# /metrics answers these client addresses (or networks) and staff sessions.
METRICS_ALLOWED_IPS = env("METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"], list)
METRICS_ADDRESS = env("METRICS_ADDRESS", "127.0.0.1")
# Several worker processes: prometheus_client shares values through this
# directory (read from the environment by prometheus_client itself).
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR")
if PROMETHEUS_MULTIPROC_DIR:
    os.makedirs(PROMETHEUS_MULTIPROC_DIR, exist_ok=True)
PROFILE_REQUESTS = env("PROFILE_REQUESTS", False, bool)
PROFILE_THRESHOLD_MS = env("PROFILE_THRESHOLD_MS", 200, float)
# JSON lines in production shape, readable lines on the embedded default.
LOG_FORMAT = env("LOG_FORMAT", "json" if PRODUCTION else "plain")
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured("LOG_FORMAT must be json or plain.")

# --- Auth -------------------------------------------------------------------------
LOGIN_URL = "/login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Open sign-up at /signup without an invite (/signup is 404 otherwise);
# invite links (/join/<token>) sign people up either way (docs/OPERATIONS.md).
ALLOW_SIGNUP = env("ALLOW_SIGNUP", False, bool)
if env("FAST_PASSWORD_HASHER", False, bool):
    # Tests and load tests only: log-in cost is not what they measure.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Static files ---------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_MAX_AGE = env("STATIC_MAX_AGE", 86400, int)
WHITENOISE_MAX_AGE = STATIC_MAX_AGE
# Before the first collectstatic (tests, a fresh checkout) templates fall back
# to unhashed names instead of failing.
WHITENOISE_MANIFEST_STRICT = False
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # Hashed names and gzip + Brotli copies made at collectstatic; hashed
        # names are served with "immutable" by whitenoise.
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if not DEBUG
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- Uploads (chat.uploads; docs/OPERATIONS.md, "Uploads") -----------------------
# Largest attachment in bytes; a larger one is 413 and nothing is stored.
UPLOAD_MAX_BYTES = env("UPLOAD_MAX_BYTES", 25 * 1024 * 1024, int)
# Where the file-system storage keeps uploads (back it up with the database).
MEDIA_ROOT = Path(env("MEDIA_ROOT", str(BASE_DIR / "media")))
# Never served as a URL prefix: every download goes through the access-checked
# view (chat.upload_views); this only names the storage's base URL.
MEDIA_URL = "/uploads/"
# Uploads above this are spooled to a temporary file, not held in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2621440
# The size limit is enforced while the body is received (chat.uploads), before
# Django's own handlers keep any byte.
FILE_UPLOAD_HANDLERS = [
    "chat.uploads.UploadLimitHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# Behind nginx: after the access check the download view answers with
# X-Accel-Redirect: <this prefix><storage name> and an empty body (nginx's
# internal location serves the bytes). Empty: Django streams the file.
UPLOAD_ACCEL_REDIRECT = env("UPLOAD_ACCEL_REDIRECT", "")
# An S3-compatible store through django-storages when a bucket is named; the
# file system (MEDIA_ROOT) otherwise. Objects are private; credentials come
# from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (boto3 reads them itself).
AWS_STORAGE_BUCKET_NAME = env("AWS_STORAGE_BUCKET_NAME", "")
if AWS_STORAGE_BUCKET_NAME:
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": env("AWS_S3_ENDPOINT_URL") or None,
            "region_name": env("AWS_S3_REGION_NAME") or None,
            "default_acl": None,  # the bucket's own (private) policy
            "querystring_auth": True,  # any URL the storage makes is signed
            "file_overwrite": False,
        },
    }

# --- Security (production shape) ------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION and not DEBUG:
    # Served behind a TLS-terminating proxy in production shape.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = env("SESSION_COOKIE_SECURE", True, bool)
    CSRF_COOKIE_SECURE = env("CSRF_COOKIE_SECURE", True, bool)
    SECURE_SSL_REDIRECT = env("SECURE_SSL_REDIRECT", False, bool)
    SECURE_HSTS_SECONDS = env("SECURE_HSTS_SECONDS", 31536000, int)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    # The TLS proxy redirects plain HTTP; the app itself also serves loopback
    # health checks and load tests over plain HTTP.
    SILENCED_SYSTEM_CHECKS = ["security.W008"] if not SECURE_SSL_REDIRECT else []

LOG_LEVEL = env("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "chatsite.logging.JsonFormatter"},
    },
    "filters": {"request_id": {"()": "chatsite.logging.RequestIdFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT,
                             "filters": ["request_id"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # SQL_ECHO goes through chatsite.db (every statement, pooled or not), not
    # through Django's debug cursor.
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
EDIT_WINDOW_SECONDS = env("EDIT_WINDOW_SECONDS", 86400, int)
