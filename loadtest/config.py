"""The load test's settings, defined once: `manage.py loadtest` writes them, locust reads them.

The command builds a LoadTestConfig from its options and hands it to the locust
subprocess as environment variables (`to_env`); the locustfile reads them back
(`LoadTestConfig.from_env`). Run on its own, locust takes whichever of these are
set (a missing one takes its default):

  LOADTEST_WS_URL         ws(s):// base of the socket server (default: the host's)
  LOADTEST_USERS_PREFIX   username prefix (default "load")
  LOADTEST_PASSWORD       their password (default DEFAULT_PASSWORD, seed_demo's)
  LOADTEST_ACCOUNTS       how many accounts exist; names wrap around (0: no wrap)
  LOADTEST_FIRST_INDEX    number of the first account (default 0)
  LOADTEST_PROJECT_ID     project to use; else the first user picks the project
                          named LOADTEST_PROJECT_NAME (default "Load") from
                          GET /api/projects, or the first one listed
  LOADTEST_PROJECT_IDS    comma-separated projects: account i uses ids[i mod K]
  LOADTEST_PROJECTS       K > 1: account i uses its project named
                          LOADTEST_PROJECT_NAME (i mod K = 0) or
                          "<LOADTEST_PROJECT_NAME> <i mod K + 1>" (seed_demo's names)
  LOADTEST_MESSAGE_INTERVAL  seconds between socket sends per socket user
                          (default 5; 0 disables socket sends)
  LOADTEST_WAIT           think time "MIN,MAX" seconds between HTTP tasks
                          (default "0.25,0.75": about 2 requests/s per user)
  LOADTEST_WS_USERS       fixed number of SocketChatUser when both classes run
  LOADTEST_ME_SOCKETS     "1": every user (HTTP and socket users alike) also holds
                          the user-level socket /ws/me/ after signing in
                          (default: empty, off; "0"/"false"/"no"/"off" are off too)
  LOADTEST_DRAIN_SECONDS  at the end, wait for in-flight deliveries until none
                          progressed for this long (default 10) ...
  LOADTEST_DRAIN_MAX_SECONDS  ... or this long in all (default 120)
  LOADTEST_RESULT_FILE    write the final counters here as JSON
  LOADTEST_RUN_ID         tags this run's messages (default: a new random id)

No Django here: the locustfile imports this module in locust's own process.
"""

import os
import uuid
from dataclasses import dataclass, field

# seed_demo's password for the users it creates (the demo user and --loadtest's).
DEFAULT_PASSWORD = "demo-pass-123"
DEFAULT_USERS_PREFIX = "load"
DEFAULT_PROJECT_NAME = "Load"
DEFAULT_MESSAGE_INTERVAL = 5.0  # one socket message per socket user every 5 s
DEFAULT_THINK_TIME = (0.25, 0.75)
# The guide's locustfile: `wait_time = between(1, 3)` (`--scenario guide`).
GUIDE_WAIT = (1.0, 3.0)
DEFAULT_DRAIN_SECONDS = 10.0
DEFAULT_DRAIN_MAX_SECONDS = 120.0


def new_run_id():
    """Return a fresh id that tags one run's messages."""
    return uuid.uuid4().hex[:12]


def parse_project_ids(text):
    """Parse "a,b,c" into a tuple of ints (blank items skipped); raise ValueError if not ints."""
    return tuple(int(x) for x in str(text).split(",") if x.strip())


def parse_think_time(text):
    """Parse "MIN,MAX" seconds into two floats; raise ValueError if it is not two numbers."""
    low, high = (float(x) for x in str(text).split(","))
    return low, high


def parse_flag(text):
    """Read a yes/no variable: "1", "true", "yes", "on" (any case) are yes; else no."""
    return str(text or "").strip().lower() in ("1", "true", "yes", "on")


def format_think_time(think_time):
    """Write (MIN, MAX) as "MIN,MAX", the form parse_think_time reads."""
    return ",".join(str(x) for x in think_time)


@dataclass(frozen=True)
class LoadTestConfig:
    """One load test run's settings, as the locust scenarios use them."""

    ws_url: str = ""
    users_prefix: str = DEFAULT_USERS_PREFIX
    password: str = DEFAULT_PASSWORD
    accounts: int = 0  # 0: every locust user has an account of its own
    first_index: int = 0
    project_id: int | None = None
    project_ids: tuple[int, ...] = ()
    projects: int = 1
    project_name: str = DEFAULT_PROJECT_NAME
    message_interval: float = DEFAULT_MESSAGE_INTERVAL
    think_time: tuple[float, float] = DEFAULT_THINK_TIME
    ws_users: int | None = None
    me_sockets: bool = False  # every user also holds /ws/me/
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    drain_max_seconds: float = DEFAULT_DRAIN_MAX_SECONDS
    result_file: str = ""
    run_id: str = field(default_factory=new_run_id)

    @classmethod
    def from_env(cls, environ=None):
        """Read the LOADTEST_* variables of environ (default os.environ)."""
        env = os.environ if environ is None else environ
        # A number set empty reads as 0 (LOADTEST_PROJECTS as 1), so
        # LOADTEST_MESSAGE_INTERVAL= sends nothing; a text set empty stays empty.
        return cls(
            ws_url=env.get("LOADTEST_WS_URL", "").rstrip("/"),
            users_prefix=env.get("LOADTEST_USERS_PREFIX", DEFAULT_USERS_PREFIX),
            password=env.get("LOADTEST_PASSWORD", DEFAULT_PASSWORD),
            accounts=int(env.get("LOADTEST_ACCOUNTS") or 0),
            first_index=int(env.get("LOADTEST_FIRST_INDEX") or 0),
            project_id=int(env["LOADTEST_PROJECT_ID"]) if env.get("LOADTEST_PROJECT_ID") else None,
            project_ids=parse_project_ids(env.get("LOADTEST_PROJECT_IDS", "")),
            projects=int(env.get("LOADTEST_PROJECTS") or 1),
            project_name=env.get("LOADTEST_PROJECT_NAME", DEFAULT_PROJECT_NAME),
            message_interval=float(
                env.get("LOADTEST_MESSAGE_INTERVAL", DEFAULT_MESSAGE_INTERVAL) or 0
            ),
            think_time=parse_think_time(
                env.get("LOADTEST_WAIT", format_think_time(DEFAULT_THINK_TIME))
            ),
            ws_users=int(env["LOADTEST_WS_USERS"]) if env.get("LOADTEST_WS_USERS") else None,
            me_sockets=parse_flag(env.get("LOADTEST_ME_SOCKETS")),
            drain_seconds=float(env.get("LOADTEST_DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS) or 0),
            drain_max_seconds=float(
                env.get("LOADTEST_DRAIN_MAX_SECONDS", DEFAULT_DRAIN_MAX_SECONDS) or 0
            ),
            result_file=env.get("LOADTEST_RESULT_FILE", ""),
            run_id=env.get("LOADTEST_RUN_ID") or new_run_id(),
        )

    def to_env(self):
        """Return every LOADTEST_* variable of this config, as from_env reads it back."""
        return {
            "LOADTEST_WS_URL": self.ws_url,
            "LOADTEST_USERS_PREFIX": self.users_prefix,
            "LOADTEST_PASSWORD": self.password,
            "LOADTEST_ACCOUNTS": str(self.accounts),
            "LOADTEST_FIRST_INDEX": str(self.first_index),
            "LOADTEST_PROJECT_ID": "" if self.project_id is None else str(self.project_id),
            "LOADTEST_PROJECT_IDS": ",".join(str(x) for x in self.project_ids),
            "LOADTEST_PROJECTS": str(self.projects),
            "LOADTEST_PROJECT_NAME": self.project_name,
            "LOADTEST_MESSAGE_INTERVAL": str(self.message_interval),
            "LOADTEST_WAIT": format_think_time(self.think_time),
            "LOADTEST_WS_USERS": "" if self.ws_users is None else str(self.ws_users),
            "LOADTEST_ME_SOCKETS": "1" if self.me_sockets else "",
            "LOADTEST_DRAIN_SECONDS": str(self.drain_seconds),
            "LOADTEST_DRAIN_MAX_SECONDS": str(self.drain_max_seconds),
            "LOADTEST_RESULT_FILE": self.result_file,
            "LOADTEST_RUN_ID": self.run_id,
        }

    def account_index(self, number):
        """Return the account of the number-th locust user (wrapping around accounts)."""
        return self.first_index + (number % self.accounts if self.accounts > 0 else number)

    def username_of(self, index):
        """Return the username of account `index`."""
        return f"{self.users_prefix}{index}"

    def project_name_of(self, index):
        """Return the name of account `index`'s project of K: seed_demo's names, by i mod K."""
        part = index % self.projects
        return self.project_name if part == 0 else f"{self.project_name} {part + 1}"
