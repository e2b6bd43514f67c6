"""SECRET_KEY: with DEBUG off and a database other than SQLite, a missing key
refuses to start; DEBUG on may use the development key, loudly.

Each case runs in a fresh interpreter, because settings are read once at import.
"""

import secrets

from chatsite.tests.test_settings import run as run_settings

POSTGRES = "postgres://root@127.0.0.1:5432/postgres"
SETUP = "import django; django.setup(); print('started')"
WARNING = "WARNING: DEBUG is on and SECRET_KEY is not set"


def run(**variables):
    # django.setup() reads the settings without connecting to the database.
    return run_settings(["-c", SETUP], **variables)


def test_postgres_without_redis_refuses_to_start_without_secret_key():
    result = run(DATABASE_URL=POSTGRES)
    assert result.returncode != 0, result.stdout
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY is required" in result.stderr
    # With a key it starts, quietly.
    result = run(DATABASE_URL=POSTGRES, SECRET_KEY=secrets.token_urlsafe(50))
    assert result.returncode == 0, result.stderr
    assert WARNING not in result.stderr


def test_the_insecure_key_escape_hatch_is_gone():
    result = run(
        DATABASE_URL=POSTGRES, REDIS_URL="redis://127.0.0.1:6379/11", ALLOW_INSECURE_KEY="true"
    )
    assert result.returncode != 0, result.stdout
    assert "SECRET_KEY is required" in result.stderr


def test_debug_with_postgres_starts_on_the_dev_key_with_a_loud_warning():
    result = run(DATABASE_URL=POSTGRES, DEBUG="true")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"
    assert WARNING in result.stderr


def test_sqlite_without_secret_key_starts_quietly():
    result = run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"
    assert WARNING not in result.stderr
