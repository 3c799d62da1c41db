"""Render deploy/prometheus/alerts.yml as the Prometheus Operator's PrometheusRule of the kustomize base.

kustomize cannot wrap a plain rules file, so the base carries a generated copy; a test fails when the copy
and the rules file drift apart. Regenerate after changing the rules:

    .venv/bin/python -m tests.deploy.prometheusrule --write
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
TARGET = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml; do not edit. Regenerate with
#   .venv/bin/python -m tests.deploy.prometheusrule --write
# (tests/deploy/test_kubernetes.py fails when this file and the rules file differ).
"""


class _Dumper(yaml.SafeDumper):
    """Block scalars for multi-line strings, so PromQL and runbooks stay readable in the output."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(alerts: Path = ALERTS) -> str:
    """The PrometheusRule manifest whose spec.groups are the groups of `alerts`."""
    rules: Any = yaml.safe_load(alerts.read_text(encoding="utf-8"))
    if not isinstance(rules, dict) or not isinstance(rules.get("groups"), list):
        raise ValueError(f"{alerts}: expected a mapping with a 'groups' list")
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "job-watcher", "labels": {"app.kubernetes.io/name": "job-watcher"}},
        "spec": {"groups": rules["groups"]},
    }
    body = yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    return HEADER + str(body)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the manifest, or with --write update the base's copy; --check exits 1 when it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {TARGET.relative_to(ROOT)}")
    group.add_argument("--check", action="store_true", help="exit 1 if the checked-in copy is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        TARGET.write_text(text, encoding="utf-8")
    elif args.check:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run with --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
