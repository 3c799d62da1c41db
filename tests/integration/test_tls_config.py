"""The TLS keys of the configuration with real certificates (tests/support/certs.py): a missing or broken
file, a certificate without its key, a key that is not the certificate's or is encrypted, each an error that
names its key (exit 2); check-config prints the paths and never a key's content."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.support import config
from tests.support.certs import Pki
from watcher.cli.main import main
from watcher.config import load_config
from watcher.daemon import Daemon
from watcher.daemon.parts import tls_context, webhook_targets
from watcher.errors import ConfigError, StartupError

HOOK = {"name": "ops", "url": "https://127.0.0.1:9/hook", "secret": "whsec_" + "QUJDREVGR0hJSktMTU5PUA=="}


def load(tmp_path: Path, webhook: dict[str, Any] | None = None, **sections: dict[str, Any]) -> Any:
    tmp_path.mkdir(exist_ok=True)
    path = config.write_config(tmp_path, "https://127.0.0.1:9/api/v2", webhooks=[{**HOOK, **(webhook or {})}],
                               sections=sections)  # fmt: skip
    return load_config(path, {})


def problems(tmp_path: Path, webhook: dict[str, Any] | None = None, **sections: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, webhook, **sections)
    return info.value.problems


def test_every_place_takes_the_three_keys(tmp_path: Path, pki: Pki) -> None:
    """`[upstream]`, each `[[webhooks]]` and `[callbacks]` take ca_file and a client certificate and key;
    webhooks with the same files share one context, another set of files gets its own."""
    mtls = {"ca_file": pki.ca, "client_cert_file": pki.client_cert, "client_key_file": pki.client_key}
    path = config.write_config(
        tmp_path,
        "https://127.0.0.1:9/api/v2",
        webhooks=[{**HOOK, **mtls}, {**HOOK, "name": "two", **mtls},
                  {**HOOK, "name": "three", "ca_file": pki.ca}],
        sections={"upstream": mtls, "callbacks": mtls},
    )  # fmt: skip
    s = load_config(path, {})
    assert s.upstream.client_cert_file == pki.client_cert and s.callbacks.ca_file == pki.ca
    targets = webhook_targets(s)
    one, two, three = (targets[n].ssl_context for n in ("ops", "two", "three"))
    assert one is not None and one is two and three is not None and three is not one
    assert targets["three"].tls_files == (str(pki.ca), None, None)
    assert targets["ops"] == targets["ops"].__class__(**{**vars(targets["ops"]), "ssl_context": None})
    assert tls_context(s.upstream, "upstream") is not None
    plain = load(tmp_path / "plain")
    assert webhook_targets(plain)["ops"].ssl_context is None  # the default: system trust, no certificate
    assert tls_context(plain.upstream, "upstream") is None


@pytest.mark.parametrize("where", ["upstream", "upstream.workspaces.other", "webhooks", "callbacks"])
def test_missing_ca_file_names_its_key(tmp_path: Path, where: str) -> None:
    """A ca_file that does not exist: one line naming the key and the path."""
    missing = tmp_path / "nope.pem"
    if where == "upstream.workspaces.other":
        got = problems(tmp_path, upstream={"workspaces": {"other": {"ca_file": missing}}})
        key = f"{where}.ca_file"
    elif where == "webhooks":
        got = problems(tmp_path, {"ca_file": missing})
        key = "webhooks[0].ca_file"
    else:
        got = problems(tmp_path, **{where: {"ca_file": missing}})
        key = f"{where}.ca_file"
    assert len(got) == 1 and got[0].startswith(f"{key}: cannot read {missing}"), got


def test_certificate_without_key_and_key_without_certificate(tmp_path: Path, pki: Pki) -> None:
    """client_cert_file needs client_key_file and the other way round (both or neither)."""
    got = problems(tmp_path, {"client_cert_file": pki.client_cert})
    assert got == ["webhooks[0].client_key_file: required with client_cert_file (give both or neither)"]
    got = problems(tmp_path, upstream={"client_key_file": pki.client_key})
    assert got == ["upstream.client_cert_file: required with client_key_file (give both or neither)"]


def test_broken_files_name_the_file_at_fault(tmp_path: Path, pki: Pki) -> None:
    """Not a certificate, not a key, the wrong key, an encrypted key: each names its own key."""
    encrypted = tmp_path / "enc.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(pki.client_key), "-aes256", "-passout", "pass:pw-S3CRET",
         "-out", str(encrypted)],
        check=True, capture_output=True,
    )  # fmt: skip
    cases = [
        ({"ca_file": pki.client_key}, "ca_file", "holds no PEM certificate"),
        ({"client_cert_file": pki.client_key, "client_key_file": pki.client_key}, "client_cert_file",
         "holds no PEM certificate"),
        ({"client_cert_file": pki.client_cert, "client_key_file": pki.client_cert}, "client_key_file",
         "holds no PEM private key"),
        ({"client_cert_file": pki.client_cert, "client_key_file": pki.server_key}, "client_key_file",
         "is not the key of client_cert_file"),
        ({"client_cert_file": pki.client_cert, "client_key_file": encrypted}, "client_key_file",
         "is encrypted; key passwords are not supported"),
    ]  # fmt: skip
    for i, (keys, key, message) in enumerate(cases):
        got = problems(tmp_path / str(i), {**keys})
        assert len(got) == 1 and got[0].startswith(f"webhooks[0].{key}: ") and got[0].endswith(message), got


def test_api_tls_both_or_neither_and_readable(tmp_path: Path, pki: Pki) -> None:
    """api.tls_cert_file and api.tls_key_file go together; a bad one is named; good ones make HTTPS."""
    assert problems(tmp_path, api={"tls_cert_file": pki.server_cert}) == [
        "api.tls_key_file: required with tls_cert_file (give both or neither)"
    ]
    assert problems(tmp_path, api={"tls_key_file": pki.server_key}) == [
        "api.tls_cert_file: required with tls_key_file (give both or neither)"
    ]
    got = problems(tmp_path, api={"tls_cert_file": pki.server_cert, "tls_key_file": tmp_path / "none.key"})
    assert len(got) == 1 and got[0].startswith("api.tls_key_file: cannot read"), got
    got = problems(tmp_path, api={"tls_cert_file": pki.server_cert, "tls_key_file": pki.client_key})
    assert got == [f"api.tls_key_file: {pki.client_key} is not the key of tls_cert_file"]
    s = load(tmp_path, api={"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key})
    assert s.api.scheme == "https" and s.api.ssl_context() is not None
    assert load(tmp_path).api.scheme == "http"


def test_check_config_exit_2_names_the_key(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    """`watcher check-config` exits 2 with the key named for a certificate without its key."""
    hook = {**HOOK, "client_cert_file": pki.client_cert}
    path = config.write_config(tmp_path, "https://127.0.0.1:9/api/v2", webhooks=[hook])
    assert main(["check-config", "-c", str(path)]) == 2
    assert "webhooks[0].client_key_file: required with client_cert_file" in capsys.readouterr().err


def test_check_config_prints_paths_never_key_contents(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config shows where the certificates and keys are, and nothing of what is in them."""
    mtls = {"ca_file": pki.ca, "client_cert_file": pki.client_cert, "client_key_file": pki.client_key}
    path = config.write_config(
        tmp_path, "https://127.0.0.1:9/api/v2", webhooks=[{**HOOK, **mtls}],
        sections={"upstream": mtls, "callbacks": mtls,
                  "api": {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}},
    )  # fmt: skip
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    for name in ("ca_file", "client_cert_file", "client_key_file"):
        assert out.count(f"{name} = ") == 3, name
    assert f'client_key_file = "{pki.client_key}"' in out
    assert f'tls_key_file = "{pki.server_key}"' in out
    for secret_file in (pki.client_key, pki.server_key, pki.ca_key):
        body = [line for line in secret_file.read_text().splitlines() if not line.startswith("-----")]
        assert body and not any(line in out for line in body)
    assert "PRIVATE KEY" not in out


def test_simulate_tls_flags(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    """`watcher simulate --tls-cert` needs `--tls-key`, and a bad file is named by its flag (exit 2)."""
    assert main(["simulate", "--tls-cert", str(pki.server_cert)]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    assert main(["simulate", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key)]) == 2
    assert f"--tls-key: {pki.client_key} is not the key of --tls-cert" in capsys.readouterr().err


async def test_https_api_on_a_public_address_still_needs_tokens(tmp_path: Path, pki: Pki) -> None:
    """TLS does not stand in for authentication: a non-loopback listen without tokens is still refused."""
    tls = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    settings = load(tmp_path, api={"listen": "0.0.0.0:0", **tls})
    with pytest.raises(StartupError, match=r"api\.tokens"):
        await Daemon(settings, handle_signals=False, registry=CollectorRegistry()).run()
