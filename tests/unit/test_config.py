"""Tests of watcher.config: defaults, file + env, *_file secrets, error lines, masking, the example."""

from __future__ import annotations

import base64
import json
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from watcher.config import Settings, load_config, render_config
from watcher.config.callbacks import CallbacksConfig
from watcher.config.model import (
    ApiConfig,
    DaemonConfig,
    LogConfig,
    PollingConfig,
    StoreConfig,
    UpstreamConfig,
    WatchlistConfig,
    WebhookConfig,
    WorkspaceConfig,
)
from watcher.config.render import MASK
from watcher.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
WHSEC_NEW = "whsec_" + base64.b64encode(b"new-secret-0123456789abcdef").decode()
WHSEC_OLD = "whsec_" + base64.b64encode(b"old-secret-0123456789abcdef").decode()
# Every secret used below; none may ever show up in repr, errors or rendered output.
SECRETS = (
    "tok-S3CRET",
    "key-S3CRET",
    "api-S3CRET",
    "hdr-S3CRET",
    "ws-S3CRET",
    "pw-S3CRET",
    WHSEC_NEW,
    WHSEC_OLD,
)
BASE_ENV = {
    "WATCHER_UPSTREAM__WORKSPACE_SLUG": "acme",
    "WATCHER_UPSTREAM__TOKEN": "tok-S3CRET",
    "WATCHER_UPSTREAM__API_KEY": "key-S3CRET",
    "HOME": "/home/tester",
}


def write(tmp_path: Path, text: str, name: str = "watcher.toml") -> Path:
    """Write a file under tmp_path and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path | None, env: dict[str, str]) -> list[str]:
    """The problem lines load_config reports (the test fails if it loads)."""
    with pytest.raises(ConfigError) as info:
        load_config(path, env)
    return info.value.problems


def full_settings(tmp_path: Path) -> Settings:
    """A configuration that uses every kind of secret."""
    toml = f"""
[upstream]
workspace_slug = "acme"
token = "tok-S3CRET"
api_key = "key-S3CRET"
[upstream.workspaces.other]
token = "ws-S3CRET"
[api]
listen = "0.0.0.0:9000"
tokens = ["api-S3CRET"]
[store]
url = "postgresql://watcher:pw-S3CRET@db.internal/watcher?sslpassword=pw-S3CRET"
[[webhooks]]
name = "ops"
url = "https://ops.example.com/hook?token=pw-S3CRET"
secrets = ["{WHSEC_NEW}", "{WHSEC_OLD}"]
headers = {{ X-Receiver-Key = "hdr-S3CRET" }}
[[webhooks]]
name = "slack"
url = "https://hooks.slack.com/services/T0/B0/pw-S3CRET"
format = "slack"
"""
    return load_config(write(tmp_path, toml), {"HOME": "/home/tester"})


class TestDefaults:
    """Only the required keys given: everything else is the documented default."""

    def test_sections_have_documented_defaults(self) -> None:
        """Each section equals its model's defaults, which the values below pin down."""
        s = load_config(None, BASE_ENV)
        assert s.upstream.base_url == "https://www.oration.ai/api/v2"
        assert (s.upstream.timeout_s, s.upstream.max_concurrency, s.upstream.rate_limit_per_s) == (
            10.0,
            64,
            50.0,
        )
        assert s.polling == PollingConfig(
            initial_interval_s=5.0, multiplier=1.5, max_interval_s=60.0, jitter=0.2, max_watch_s=86400.0,
            not_found_limit=5, error_backoff_max_s=300.0, retention_s=604800.0,
        )  # fmt: skip
        assert s.api == ApiConfig(listen="127.0.0.1:8080", tokens=[], max_body_bytes=1048576)
        assert s.webhooks == []
        assert s.log == LogConfig(level="info", format=None)
        assert s.watchlist == WatchlistConfig(path=None, reload_interval_s=5.0)
        assert (s.daemon.shutdown_grace_s, s.daemon.lease_s, s.daemon.delivery_concurrency) == (
            10.0,
            60.0,
            16,
        )
        assert s.daemon.purge_interval_s == 60.0

    def test_state_dir_and_store_url_are_resolved_from_the_environment(self) -> None:
        """STATE_DIRECTORY wins, then an absolute XDG_DATA_HOME, then ~/.local/share."""
        home = load_config(None, {**BASE_ENV, "XDG_DATA_HOME": "relative/ignored"})
        assert home.resolved_state_dir() == Path("/home/tester/.local/share/job-watcher")
        xdg = load_config(None, {**BASE_ENV, "XDG_DATA_HOME": "/xdg"})
        assert xdg.resolved_state_dir() == Path("/xdg/job-watcher")
        systemd = load_config(
            None, {**BASE_ENV, "XDG_DATA_HOME": "/xdg", "STATE_DIRECTORY": "/var/lib/w:/var/lib/x"}
        )
        assert systemd.resolved_state_dir() == Path("/var/lib/w")
        assert systemd.resolved_store_url() == "sqlite:////var/lib/w/watcher.db"

    def test_configured_store_url_is_kept(self) -> None:
        """An explicit store url is used as given."""
        s = load_config(None, {**BASE_ENV, "WATCHER_STORE__URL": "memory://"})
        assert s.resolved_store_url() == "memory://"

    def test_log_level_is_case_insensitive_and_format_follows_the_terminal(self) -> None:
        """`INFO` is accepted; an unset format is console on a TTY and JSON otherwise."""
        s = load_config(None, {**BASE_ENV, "WATCHER_LOG__LEVEL": "DEBUG"})
        assert s.log.level == "debug"
        assert (s.log.resolved_format(True), s.log.resolved_format(False)) == ("console", "json")
        assert LogConfig(format="json").resolved_format(True) == "json"


class TestSources:
    """The TOML file and the environment combine, the environment winning."""

    def test_env_overrides_file_and_nested_tables_merge(self, tmp_path: Path) -> None:
        """Env replaces single keys deep inside the file's tables and leaves the rest."""
        path = write(
            tmp_path,
            """
[upstream]
workspace_slug = "acme"
token = "file-token"
api_key = "file-key"
timeout_s = 3
[upstream.workspaces.other]
token = "other-token"
[polling]
initial_interval_s = 0.05
max_interval_s = 0.2
""",
        )
        env = {
            "WATCHER_UPSTREAM__API_KEY": "env-key",
            "WATCHER_UPSTREAM__WORKSPACES__OTHER__API_KEY": "other-env-key",
            "WATCHER_POLLING__JITTER": "0.1",
            "WATCHER_CONFIG": "/not/used/because/path/is/given",
        }
        s = load_config(path, env)
        creds = s.upstream.credentials()
        assert (creds["acme"].token, creds["acme"].api_key) == ("file-token", "env-key")
        assert (creds["other"].token, creds["other"].api_key) == ("other-token", "other-env-key")
        assert s.upstream.timeout_s == 3.0
        assert (s.polling.initial_interval_s, s.polling.max_interval_s, s.polling.jitter) == (0.05, 0.2, 0.1)

    def test_webhooks_from_env_json_replace_the_files(self, tmp_path: Path) -> None:
        """A list from the environment is JSON and replaces the file's list as a whole."""
        path = write(
            tmp_path, f'[[webhooks]]\nname = "file"\nurl = "http://127.0.0.1:1/"\nsecret = "{WHSEC_NEW}"\n'
        )
        hooks = [{"name": "env", "url": "http://127.0.0.1:2/h", "format": "slack", "events": ["job.active"]}]
        s = load_config(path, {**BASE_ENV, "WATCHER_WEBHOOKS": json.dumps(hooks)})
        assert [(h.name, h.url, h.events) for h in s.webhooks] == [
            ("env", "http://127.0.0.1:2/h", ["job.active"])
        ]

    def test_watcher_config_names_the_file(self, tmp_path: Path) -> None:
        """With no path, $WATCHER_CONFIG is read."""
        path = write(tmp_path, '[upstream]\nworkspace_slug = "from-file"\ntoken = "t"\napi_key = "k"\n')
        assert load_config(None, {"WATCHER_CONFIG": str(path)}).upstream.workspace_slug == "from-file"

    def test_process_environment_is_the_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """env=None reads os.environ."""
        for key, value in BASE_ENV.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("WATCHER_CONFIG", raising=False)
        monkeypatch.setenv("WATCHER_UPSTREAM__WORKSPACE_SLUG", "from-environ")
        assert load_config(None).upstream.workspace_slug == "from-environ"

    def test_empty_env_value_counts_as_unset(self) -> None:
        """An empty variable (common in templated deployments) does not override or fail validation."""
        s = load_config(None, {**BASE_ENV, "WATCHER_UPSTREAM__WORKSPACE_ID": ""})
        assert s.upstream.workspace_id is None

    def test_workspaces_fall_back_to_the_default_credentials(self) -> None:
        """Extra workspaces inherit token, api_key and base_url but not workspace_id."""
        ws_id = "6F8C7D9D-0000-4000-8000-000000000000"
        env = {
            **BASE_ENV,
            "WATCHER_UPSTREAM__WORKSPACE_ID": "11111111-2222-4333-8444-555555555555",
            "WATCHER_UPSTREAM__WORKSPACES": json.dumps(
                {
                    "beta": {
                        "api_key": "beta-key",
                        "workspace_id": ws_id,
                        "base_url": "http://127.0.0.1:9/api/",
                    }
                }
            ),
        }
        creds = load_config(None, env).upstream.credentials()
        assert set(creds) == {"acme", "beta"}
        beta = creds["beta"]
        assert (beta.token, beta.api_key, beta.workspace_id) == ("tok-S3CRET", "beta-key", ws_id.lower())
        assert beta.base_url == "http://127.0.0.1:9/api"  # trailing slash dropped: paths are appended

    def test_workspace_rates_default_to_the_upstream_s(self) -> None:
        """A workspace's own `rate_limit_per_s` is optional; None means the upstream's rate."""
        env = {
            **BASE_ENV,
            "WATCHER_UPSTREAM__RATE_LIMIT_PER_S": "40",
            "WATCHER_UPSTREAM__WORKSPACES": json.dumps({"beta": {"rate_limit_per_s": 5}, "gamma": {}}),
        }
        upstream = load_config(None, env).upstream
        assert upstream.workspace_rates() == {"acme": None, "beta": 5.0, "gamma": None}


class TestSecretFiles:
    """`*_file` keys read secrets from mounted files."""

    def test_token_file_is_read_without_trailing_newline(self, tmp_path: Path) -> None:
        """The file's content is the secret, minus its final newline."""
        token = write(tmp_path, "tok-from-file\n", "token")
        key = write(tmp_path, "key-from-file\r\n", "key")
        env = {"WATCHER_UPSTREAM__WORKSPACE_SLUG": "acme", "WATCHER_UPSTREAM__TOKEN_FILE": str(token)}
        s = load_config(None, {**env, "WATCHER_UPSTREAM__API_KEY_FILE": str(key)})
        creds = s.upstream.credentials()["acme"]
        assert (creds.token, creds.api_key) == ("tok-from-file", "key-from-file")
        assert str(token) in render_config(s)  # the path is shown, the content is not
        assert "tok-from-file" not in render_config(s) + repr(s)

    def test_webhook_secret_file(self, tmp_path: Path) -> None:
        """A webhook secret may come from a file and must still be a whsec_ secret."""
        good = write(tmp_path, WHSEC_NEW + "\n", "good")
        hook = {"name": "a", "url": "https://x.example/", "secret_file": str(good)}
        s = load_config(None, {**BASE_ENV, "WATCHER_WEBHOOKS": json.dumps([hook])})
        assert s.webhooks[0].all_secrets() == [WHSEC_NEW]
        bad = write(tmp_path, "pw-S3CRET", "bad")
        lines = problems(
            None, {**BASE_ENV, "WATCHER_WEBHOOKS": json.dumps([{**hook, "secret_file": str(bad)}])}
        )
        assert [line.split(":")[0] for line in lines] == ["webhooks[0].secret_file"]
        assert "pw-S3CRET" not in str(lines)

    @pytest.mark.parametrize(
        ("setup", "expected"),
        [
            (
                {"WATCHER_UPSTREAM__TOKEN_FILE": "/nonexistent/token"},
                "upstream.token_file: cannot read /nonexistent/token: No such file",
            ),
            (
                {"WATCHER_UPSTREAM__TOKEN": "t", "WATCHER_UPSTREAM__TOKEN_FILE": "FULL"},
                "upstream.token_file: cannot be combined with token",
            ),
            ({"WATCHER_UPSTREAM__TOKEN_FILE": "EMPTY"}, "upstream.token_file: "),
            ({}, "upstream.token: required (or set token_file)"),
        ],
    )  # fmt: skip
    def test_file_problems_name_the_key(self, tmp_path: Path, setup: dict[str, str], expected: str) -> None:
        """Unreadable, empty, conflicting or missing secrets are one line naming the key."""
        files = {"EMPTY": str(write(tmp_path, "\n", "empty")), "FULL": str(write(tmp_path, "tok\n", "full"))}
        env = {"WATCHER_UPSTREAM__WORKSPACE_SLUG": "acme", "WATCHER_UPSTREAM__API_KEY": "k"}
        env |= {k: files.get(v, v) for k, v in setup.items()}
        lines = problems(None, env)
        assert len(lines) == 1
        assert lines[0].startswith(expected)


class TestProblems:
    """Every bad key is one line `dotted.key[index]: message`, all reported at once."""

    def test_several_problems_at_once(self, tmp_path: Path) -> None:
        """A bad webhook url and a negative timeout give two lines naming each key."""
        path = write(
            tmp_path,
            f"""
[upstream]
workspace_slug = "acme"
token = "t"
api_key = "k"
timeout_s = -1
[[webhooks]]
name = "ops"
url = "ftp://ops.example.com/"
secret = "{WHSEC_NEW}"
""",
        )
        lines = problems(path, {})
        assert len(lines) == 2
        assert sorted(line.split(":")[0] for line in lines) == ["upstream.timeout_s", "webhooks[0].url"]

    @pytest.mark.parametrize(
        ("env", "key"),
        [
            ({"WATCHER_POLLING__JITTER": "1.0"}, "polling.jitter"),
            ({"WATCHER_POLLING__MULTIPLIER": "0.5"}, "polling.multiplier"),
            ({"WATCHER_POLLING__MAX_INTERVAL_S": "1", "WATCHER_POLLING__INITIAL_INTERVAL_S": "2"},
             "polling.max_interval_s"),
            ({"WATCHER_POLLING__NOT_FOUND_LIMIT": "0"}, "polling.not_found_limit"),
            ({"WATCHER_POLLING__MAX_WATCH_S": "nan"}, "polling.max_watch_s"),
            ({"WATCHER_UPSTREAM__BASE_URL": "www.oration.ai"}, "upstream.base_url"),
            ({"WATCHER_UPSTREAM__WORKSPACE_ID": "not-a-uuid"}, "upstream.workspace_id"),
            ({"WATCHER_UPSTREAM__WORKSPACE_SLUG": "has space"}, "upstream.workspace_slug"),
            ({"WATCHER_UPSTREAM__WORKSPACES": '{"acme": {}}'}, "upstream.workspaces.acme"),
            ({"WATCHER_UPSTREAM__WORKSPACES": '{"b": {"rate_limit_per_s": 0}}'},
             "upstream.workspaces.b.rate_limit_per_s"),
            ({"WATCHER_UPSTREAM__MAX_CONCURRENCY": "0"}, "upstream.max_concurrency"),
            ({"WATCHER_API__LISTEN": "8080"}, "api.listen"),
            ({"WATCHER_API__TOKENS": '["ok", ""]'}, "api.tokens[1]"),
            ({"WATCHER_STORE__URL": "mysql://x"}, "store.url"),
            ({"WATCHER_LOG__LEVEL": "verbose"}, "log.level"),
            ({"WATCHER_DAEMON__LEASE_S": "5"}, "daemon.lease_s"),
            ({"WATCHER_WEBHOOKS": "[{oops"}, "webhooks"),
        ],
    )  # fmt: skip
    def test_bad_value_names_the_key(self, env: dict[str, str], key: str) -> None:
        """Each bad value yields exactly one line starting with its key."""
        lines = problems(None, {**BASE_ENV, **env})
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"{key}: "), lines

    @pytest.mark.parametrize(
        ("hook", "key"),
        [
            ({"secret": "pw-S3CRET"}, "webhooks[0].secret"),
            ({"secret": "whsec_!!notbase64"}, "webhooks[0].secret"),
            ({"secrets": [WHSEC_NEW, "pw-S3CRET"]}, "webhooks[0].secrets[1]"),
            ({"secret": WHSEC_NEW, "secrets": [WHSEC_OLD]}, "webhooks[0].secrets"),
            ({"secrets": []}, "webhooks[0].secrets"),
            ({"secret": None}, "webhooks[0].secret"),
            ({"events": ["job.success", "exploded"]}, "webhooks[0].events[1]"),
            ({"events": ["job.Exploded!"]}, "webhooks[0].events[0]"),
            ({"events": []}, "webhooks[0].events"),
            ({"format": "teams"}, "webhooks[0].format"),
            ({"name": "no/slash"}, "webhooks[0].name"),
            ({"max_attempts": 0}, "webhooks[0].max_attempts"),
            ({"retry_initial_s": 10, "retry_max_s": 1}, "webhooks[0].retry_max_s"),
            ({"headers": {"Webhook-Signature": "pw-S3CRET"}}, "webhooks[0].headers.Webhook-Signature"),
            ({"headers": {"Bad Header": "pw-S3CRET"}}, "webhooks[0].headers.Bad Header"),
            ({"retries": 3}, "webhooks[0].retries"),
        ],
    )  # fmt: skip
    def test_bad_webhook_names_the_key(self, hook: dict[str, object], key: str) -> None:
        """Webhook problems carry the list index and never the secret."""
        base = {"name": "ops", "url": "https://ops.example.com/", "secret": WHSEC_NEW}
        lines = problems(None, {**BASE_ENV, "WATCHER_WEBHOOKS": json.dumps([{**base, **hook}])})
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"{key}: "), lines
        assert not any(secret in lines[0] for secret in SECRETS)

    def test_duplicate_webhook_names(self) -> None:
        """Names identify webhooks in the API and in metrics, so they are unique."""
        hook = {"name": "ops", "url": "https://ops.example.com/", "format": "slack"}
        lines = problems(None, {**BASE_ENV, "WATCHER_WEBHOOKS": json.dumps([hook, hook])})
        assert lines == ["webhooks[1].name: duplicates webhooks[0].name"]

    def test_unknown_keys_are_rejected_wherever_they_are(self, tmp_path: Path) -> None:
        """Typos at the top, in a section and in a workspace are errors naming the key, value not shown."""
        path = write(
            tmp_path,
            """
typo_top = 1
[upstream]
workspace_slug = "acme"
token = "t"
api_key = "k"
tokn = "pw-S3CRET"
[upstream.workspaces.other]
apikey = "pw-S3CRET"
[polling]
intervall_s = 3
""",
        )
        lines = problems(path, {})
        assert sorted(lines) == [
            "polling.intervall_s: unknown key",
            "typo_top: unknown key",
            "upstream.tokn: unknown key",
            "upstream.workspaces.other.apikey: unknown key",
        ]

    def test_file_errors(self, tmp_path: Path) -> None:
        """A missing file and a TOML syntax error name the file (and the line)."""
        missing = tmp_path / "missing.toml"
        assert problems(missing, {}) == [f"{missing}: cannot read: No such file or directory"]
        broken = write(tmp_path, '[upstream]\nworkspace_slug = "acme"\ntoken = \n')
        (line,) = problems(broken, {})
        assert line.startswith(f"{broken}: invalid TOML: ")
        assert "line 3" in line


class TestSecretsNeverLeak:
    """Secrets stay out of repr, errors and rendered output."""

    def test_repr_and_render_hide_every_secret(self, tmp_path: Path) -> None:
        """Tokens, api keys, webhook secrets, header values and URL passwords are all masked."""
        s = full_settings(tmp_path)
        rendered = render_config(s)
        for text in (repr(s), str(s), rendered, repr(s.upstream.credentials())):
            leaked = [secret for secret in SECRETS if secret in text]
            assert leaked == [], text
        assert s.webhooks[0].all_secrets() == [WHSEC_NEW, WHSEC_OLD]  # still usable, newest first

    def test_config_error_hides_secrets(self) -> None:
        """A bad secret value is reported without its value."""
        env = {**BASE_ENV, "WATCHER_WEBHOOKS": json.dumps([{"name": "a", "url": "x", "secret": "pw-S3CRET"}])}
        with pytest.raises(ConfigError) as info:
            load_config(None, env)
        assert "pw-S3CRET" not in str(info.value)
        assert "pw-S3CRET" not in repr(info.value)
        assert len(info.value.problems) == 2


class TestRender:
    """render_config prints the effective configuration as TOML."""

    def test_render_is_toml_with_resolved_defaults(self, tmp_path: Path) -> None:
        """The output parses, shows computed defaults and masks secrets as ********."""
        s = full_settings(tmp_path)
        out = tomllib.loads(render_config(s))
        assert out["upstream"]["token"] == MASK
        assert out["api"]["tokens"] == [MASK]
        assert out["upstream"]["workspaces"]["other"] == {"token": MASK}
        assert out["daemon"]["state_dir"] == "/home/tester/.local/share/job-watcher"
        assert out["store"]["url"] == f"postgresql://watcher:{MASK}@db.internal/watcher?{MASK}"
        ops, slack = out["webhooks"]
        assert ops["secrets"] == [MASK, MASK]
        assert ops["headers"] == {"X-Receiver-Key": MASK}
        assert ops["url"] == f"https://ops.example.com/hook?{MASK}"
        assert slack["url"] == f"https://hooks.slack.com/{MASK}"
        assert out["polling"] == PollingConfig().model_dump()

    def test_render_of_defaults_shows_the_sqlite_url(self) -> None:
        """With no store url, the SQLite file under the state directory is printed."""
        out = tomllib.loads(render_config(load_config(None, {**BASE_ENV, "STATE_DIRECTORY": "/var/lib/w"})))
        assert out["store"]["url"] == "sqlite:////var/lib/w/watcher.db"
        assert out["webhooks"] == []
        assert out["log"] == {"level": "info"}


class TestApi:
    """`api.listen` parsing and the loopback check."""

    @pytest.mark.parametrize(
        ("listen", "host", "port", "loopback"),
        [
            ("127.0.0.1:8080", "127.0.0.1", 8080, True),
            ("[::1]:0", "::1", 0, True),
            ("localhost:9", "localhost", 9, True),
            ("0.0.0.0:80", "0.0.0.0", 80, False),
            ("[::]:8080", "::", 8080, False),
            ("watcher.internal:8080", "watcher.internal", 8080, False),
        ],
    )
    def test_listen(self, listen: str, host: str, port: int, loopback: bool) -> None:
        """host, port and is_loopback come from `listen`."""
        api = ApiConfig(listen=listen)
        assert (api.host, api.port, api.is_loopback()) == (host, port, loopback)

    @pytest.mark.parametrize("listen", ["8080", "::1:8080", "[::1]", "host:99999", "[nothex]:1", ":8080"])
    def test_bad_listen(self, listen: str) -> None:
        """Malformed addresses are refused with the key named."""
        assert problems(None, {**BASE_ENV, "WATCHER_API__LISTEN": listen})[0].startswith("api.listen: ")


class TestExample:
    """config.example.toml is valid and complete."""

    def test_example_loads(self) -> None:
        """The example passes validation as shipped."""
        s = load_config(REPO / "config.example.toml", {"HOME": "/home/tester"})
        assert [(h.name, h.format) for h in s.webhooks] == [
            ("ops", "standard"),
            ("slack-failures", "slack"),
            ("pager-acme", "pagerduty"),
            ("teams-ops", "msteams"),
            ("discord-billing", "discord"),
            ("alertmanager-1", "alertmanager"),
            ("alertmanager-2", "alertmanager"),
            ("custom", "template"),
        ]
        assert set(s.upstream.credentials()) == {"acme", "other"}

    @pytest.mark.parametrize(
        ("section", "model"),
        [
            ("upstream", UpstreamConfig),
            ("upstream.workspaces.other", WorkspaceConfig),
            ("polling", PollingConfig),
            ("api", ApiConfig),
            ("store", StoreConfig),
            ("watchlist", WatchlistConfig),
            ("webhooks", WebhookConfig),
            ("callbacks", CallbacksConfig),
            ("log", LogConfig),
            ("daemon", DaemonConfig),
        ],
    )
    def test_example_documents_every_key(self, section: str, model: type[BaseModel]) -> None:
        """Every key appears (maybe commented out) under its table header, or as a sub-table of its own."""
        text = (REPO / "config.example.toml").read_text(encoding="utf-8")
        tables = re.split(r"^\[+([\w.-]+)\]+\s*$", text, flags=re.M)
        body = "".join(tables[i + 1] for i in range(1, len(tables), 2) if tables[i] == section)
        for key in model.model_fields:
            documented = re.search(rf"^#? ?{key} = ", body, re.M) or f"[{section}.{key}" in text
            assert documented, f"[{section}] does not document {key}"


class TestGrownStatuses:
    """`[upstream] terminal_statuses`, `max_body_bytes` and webhook event types (SPEC §2, §16)."""

    def test_defaults(self) -> None:
        """success and failed end a watch; bodies up to 1 MiB; the default filter is the terminal ones."""
        s = load_config(None, {**BASE_ENV, "WATCHER_WEBHOOKS": '[{"name": "a", "url": "https://a.example/",'
                               f' "secret": "{WHSEC_NEW}"}}]'})  # fmt: skip
        assert (s.upstream.terminal_statuses, s.upstream.max_body_bytes) == (["success", "failed"], 1048576)
        assert s.webhooks[0].events == ["job.success", "job.failed", "job.expired", "job.missing"]
        assert s.unknown_event_types() == []

    def test_terminal_statuses_are_named_like_upstream_values_and_drive_the_default_filter(self) -> None:
        """Lower-cased, reserved names prefixed, duplicates dropped; every one joins the default filter,
        while a webhook's explicit events are kept as given."""
        hooks = [
            {"name": "a", "url": "https://a.example/", "secret": WHSEC_NEW},
            {"name": "b", "url": "https://b.example/", "secret": WHSEC_NEW, "events": ["job.failed"]},
        ]
        env = {
            **BASE_ENV,
            "WATCHER_UPSTREAM__TERMINAL_STATUSES": '["success", "FAILED", "Cancelled", "expired", "failed"]',
            "WATCHER_WEBHOOKS": json.dumps(hooks),
        }
        s = load_config(None, env)
        assert s.upstream.terminal_statuses == ["success", "failed", "cancelled", "upstream_expired"]
        assert s.webhooks[0].events == [
            "job.success", "job.failed", "job.cancelled", "job.upstream_expired",
            "job.expired", "job.missing",
        ]  # fmt: skip
        assert s.webhooks[1].events == ["job.failed"]
        assert "job.cancelled" in render_config(s)

    @pytest.mark.parametrize(
        ("env", "key"),
        [
            ({"WATCHER_UPSTREAM__TERMINAL_STATUSES": '["success", "not a name"]'},
             "upstream.terminal_statuses[1]"),
            ({"WATCHER_UPSTREAM__TERMINAL_STATUSES": "[]"}, "upstream.terminal_statuses"),
            ({"WATCHER_UPSTREAM__MAX_BODY_BYTES": "100"}, "upstream.max_body_bytes"),
        ],
    )  # fmt: skip
    def test_bad_values_name_the_key(self, env: dict[str, str], key: str) -> None:
        """A terminal status that is no name, an empty list or a tiny body limit: one line, key named."""
        lines = problems(None, {**BASE_ENV, **env})
        assert len(lines) == 1 and lines[0].startswith(f"{key}: "), lines

    def test_any_job_event_is_accepted_and_unknown_ones_are_listed(self) -> None:
        """job.cancelled and job.paused load; those the watcher does not know it emits are listed for the
        start-up warning (job.cancelled stops being unknown once cancelled is a terminal status)."""
        events = ["job.failed", "job.cancelled", "job.paused", "job.unknown", "job.upstream_slow"]
        hook = {"name": "a", "url": "https://a.example/", "secret": WHSEC_NEW, "events": events}
        env = {**BASE_ENV, "WATCHER_WEBHOOKS": json.dumps([hook])}
        unknown = load_config(None, env).unknown_event_types()
        assert [line.split(": ")[1].split()[0] for line in unknown] == [
            "job.cancelled", "job.paused", "job.upstream_slow",
        ]  # fmt: skip
        assert all(line.startswith("webhooks[0].events: ") for line in unknown)
        env["WATCHER_UPSTREAM__TERMINAL_STATUSES"] = '["success", "failed", "cancelled"]'
        assert len(load_config(None, env).unknown_event_types()) == 2
