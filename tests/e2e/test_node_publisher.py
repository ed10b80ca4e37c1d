"""A non-Python publisher: the Node.js example validates with ajv, then NOTIFYs.

Needs Node.js and npm (the npm packages `pg` and `ajv`); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from support.paths import EXAMPLES, REPO, SCHEMAS
from support.service import Evidence, ServiceProcess

EXPECTED_ERRORS: dict[str, str] = json.loads((EXAMPLES / "expected-errors.json").read_text())[
    "errors"
]


@pytest.fixture(scope="module")
def node_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed on this machine")
    folder = tmp_path_factory.mktemp("node") / "example"
    shutil.copytree(REPO / "docs" / "examples" / "node", folder)
    install = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if install.returncode != 0:
        pytest.skip(f"npm could not install pg and ajv: {install.stderr[-500:]}")
    return folder


def node(
    folder: Path, script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", script, *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DISPATCHER_SCHEMAS": str(SCHEMAS), **(env or {})},
    )


def node_dsn(dsn: str) -> str:
    """The DSN as a URL, which node-postgres understands."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host", "127.0.0.1"))
    user, database, port = (
        params.get("user", "postgres"),
        params.get("dbname", "postgres"),
        params.get("port", 5432),
    )
    if host.startswith("/"):
        return f"postgresql://{user}@/{database}?host={host}&port={port}"
    return f"postgresql://{user}@{host}:{port}/{database}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_conformance_example_behaves_the_same_in_ajv(node_example: Path) -> None:
    result = node(node_example, "conformance.js")
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    assert len(outcomes) == len(list(EXAMPLES.glob("*/*/*.json")))
    for example, outcome in outcomes.items():
        if "/valid/" in example:
            assert outcome == {"valid": True, "paths": []}, example
        else:
            assert outcome["valid"] is False, example
            assert EXPECTED_ERRORS[example] in outcome["paths"], example


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_node_publisher_submits_a_task_that_runs(
    node_example: Path,
    start_service: Callable[..., ServiceProcess],
    service_config: dict[str, Any],
    pg_dsn: str,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(service_config)
    env = {"DISPATCHER_DSN": node_dsn(pg_dsn)}
    sent = node(
        node_example,
        "publisher.js",
        channel,
        "support.service_tasks.record",
        json.dumps([str(evidence.path), "from node"]),
        '{"n": 1}',
        env=env,
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("submitted support.service_tasks.record as ")
    [record] = evidence.wait_for(1)
    assert (record["args"], record["kwargs"]) == (["from node"], {"n": 1})
    refused = node(node_example, "publisher.js", channel, "lambda: 1", env=env)
    assert refused.returncode != 0
    assert "invalid task message: /task must match pattern" in refused.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_node_signs_the_conformance_examples_byte_for_byte(node_example: Path) -> None:
    """Node's createHmac gives the signatures of the examples (secret ``example-secret``)."""
    examples = sorted((EXAMPLES / "signed-envelope" / "valid").glob("*.json"))
    vectors = [json.loads(path.read_text(encoding="utf-8")) for path in examples]
    script = (
        "import { signEnvelope } from './publisher.js';"
        "for (const v of JSON.parse(process.env.VECTORS))"
        " console.log(signEnvelope(v.body, v.key_id, 'example-secret', v.signed_at));"
    )
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        cwd=node_example,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VECTORS": json.dumps(vectors)},
    )
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == vectors


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_signed_message_from_node_runs_where_signatures_are_required(
    node_example: Path,
    start_service: Callable[..., ServiceProcess],
    service_config: dict[str, Any],
    pg_dsn: str,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["security"] = {
        "keys": [{"id": "node-key", "secret_env": "DISPATCHER_SIGNING_SECRET"}],
        "require_signed": ["task"],
    }
    signing = {"DISPATCHER_SIGNING_KEY_ID": "node-key", "DISPATCHER_SIGNING_SECRET": "ň0de secret"}
    service = start_service(service_config, env=signing)
    env = {"DISPATCHER_DSN": node_dsn(pg_dsn)}
    args = json.dumps([str(evidence.path), "signed in node"])
    unsigned = node(
        node_example, "publisher.js", channel, "support.service_tasks.record", args, env=env
    )
    assert unsigned.returncode == 0, unsigned.stderr
    service.wait_for_log(r"rejected message on channel .*unsigned task message over pg_notify")
    sent = node(
        node_example,
        "publisher.js",
        channel,
        "support.service_tasks.record",
        args,
        env={**env, **signing},
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.rstrip().endswith("(signed with key node-key)")
    [record] = evidence.wait_for(1)
    assert record["args"] == ["signed in node"]
