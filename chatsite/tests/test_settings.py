"""Production settings: refuse to start without SECRET_KEY; check --deploy is clean.

Each case runs in a fresh interpreter, because settings are read once at import.
"""

import os
import secrets
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]

# Variables that would leak from the test run's own environment into the child.
SETTINGS_VARIABLES = {
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "DJANGO_SETTINGS_MODULE",
}

PRODUCTION = {
    "DATABASE_URL": "postgres://root@127.0.0.1:5432/postgres",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


def run(args, **variables):
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
    env["DJANGO_SETTINGS_MODULE"] = "chatsite.settings"
    # An empty value counts as unset for the settings, and keeps a local .env
    # file from supplying one (python-dotenv never overrides a set variable).
    env.setdefault("SECRET_KEY", "")
    env.update(variables)
    return subprocess.run(
        [sys.executable, *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_production_shape_refuses_to_start_without_secret_key():
    result = run(["-c", "import django; django.setup()"], **PRODUCTION)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY" in result.stderr


SHOW_SHAPE = (
    "import django; django.setup(); from django.conf import settings; "
    "print(settings.PRODUCTION, settings.DEBUG)"
)


def test_production_shape_starts_with_secret_key():
    result = run(
        ["-c", SHOW_SHAPE],
        SECRET_KEY=secrets.token_urlsafe(50),
        **PRODUCTION,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


def test_embedded_default_starts_without_secret_key():
    result = run(["-c", "import django; django.setup()"])
    assert result.returncode == 0, result.stderr


def test_check_deploy_is_clean_in_production_shape():
    result = run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        SECRET_KEY=secrets.token_urlsafe(50),  # 67 random characters
        ALLOWED_HOSTS="chat.example.com",
        **PRODUCTION,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in result.stdout, output
    assert "WARNINGS" not in output, output
