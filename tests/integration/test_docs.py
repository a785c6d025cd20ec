"""The docs as a newcomer follows them: examples run, links resolve, tables match the code.

- README's Python client example runs as written against a live server and prints what
  it published.
- Every relative link in README.md and docs/*.md names a file that exists (and, with a
  ``#fragment``, a heading in it).
- README's settings table lists exactly the settings the code knows, with their defaults.
- README's table of what ``init`` creates matches what ``init`` creates.
- docs/operations.md's PostgreSQL set-up (roles, grants, init as the owner, serve as the
  runtime role, migrate) and its pg_dump / createdb / pg_restore run as written.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from click.testing import CliRunner

from chronicle.cli import main
from chronicle.config import TABLE, DataDir
from chronicle.core.sapient import SigningKey
from tests.helpers import (
    Identity,
    ServerProcess,
    http_publish,
    http_request,
    serving,
    stop_process,
    verify_chain,
)
from tests.integration.conftest import ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "config").glob("*.md"))]


@pytest.fixture
def backend() -> str:
    """Docs do not depend on the backend: SQLite only."""
    return "sqlite"


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end != -1 else len(text)]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


async def test_readme_client_example_runs_as_written(tmp_path: Path) -> None:
    (example,) = python_blocks(section(README.read_text(), "## Auditing, and the Python client"))
    script = tmp_path / "example.py"
    script.write_text(example)
    key = SigningKey.generate()
    key_file = tmp_path / "alice.key"
    key_file.write_text(key.to_text())
    for earlier in ([], ["an earlier entry"]):  # an empty chain (export), then since
        async with serving(tmp_path / f"ledger{len(earlier)}") as srv:
            alice = await srv.add_client("alice", key=key)
            for body in earlier:
                assert (await srv.publish(alice, body)).status == 200
            env = {**os.environ, "CHRONICLE_URL": srv.url, "SERVER_PK": srv.key.public_b64,
                   "CLIENT_ID": alice.client_id, "KEY_FILE": str(key_file),
                   "PYTHONPATH": str(ROOT)}
            done = await asyncio.to_thread(
                subprocess.run, [sys.executable, str(script)], env=env, capture_output=True,
                text=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
            published, entry = done.stdout.splitlines()  # only what came after the old head
            currhash = published.removeprefix("published ")
            assert entry == f'{currhash} {{"package": "demo", "version": "1.0.0"}}'


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    out = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def _prose(text: str) -> str:
    """Markdown without code blocks and code spans (they hold no links)."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))


def test_relative_links_resolve() -> None:
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(doc.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, fragment = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
            elif fragment and path.suffix == ".md" and fragment not in _anchors(path):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_settings_table_is_the_code() -> None:
    table = section(README.read_text(), "### Settings")
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| `([^`]*)` \|", table, re.M))
    assert list(rows) == [s.key for s in TABLE]
    for setting in TABLE:
        shown = rows[setting.key]
        expected = setting.default if isinstance(setting.default, str) else \
            json.dumps(setting.default)
        assert shown in (expected, json.dumps(expected)), (setting.key, shown, expected)


def test_readme_init_table_is_what_init_creates(tmp_path: Path) -> None:
    table = section(README.read_text(), "### Data directory")
    created_by_init = table[:table.index("Created later")]
    named = set(re.findall(r"^\| `([^`/]+)/?` \|", created_by_init, re.M))
    res = CliRunner().invoke(main, ["init", "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 0, res.stderr
    assert named == {p.name for p in (tmp_path / "d").iterdir()}


# --- docs/operations.md: the PostgreSQL set-up, run as written ------------------------------

OPERATIONS = ROOT / "docs" / "operations.md"


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


class PgNames:
    """The doc's role and database names made unique to this test, and its host ours."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.owner, self.app = f"own_{tag}", f"app_{tag}"
        self.db, self.restored = f"db_{tag}", f"db_{tag}_restored"
        parts = urlsplit(ADMIN_URL)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 5432

    def __call__(self, text: str) -> str:
        text = text.replace("chronicle_owner", self.owner).replace("chronicle_app", self.app)
        text = text.replace("chronicle_restored", self.restored)
        text = text.replace("db.example:5432", f"{self.host}:{self.port}")
        text = text.replace("-h db.example", f"-h {self.host} -p {self.port}")
        text = re.sub(r"(DATABASE|\\c) chronicle\b", rf"\1 {self.db}", text)
        return text.replace(f":{self.port}/chronicle'", f":{self.port}/{self.db}'")

    def url(self, role: str, db: str) -> str:
        return f"postgresql://{role}@{self.host}:{self.port}/{db}"


def commands(block: str, names: PgNames, data: Path) -> list[list[str]]:
    """The command lines of a sh block (comments dropped, continuations joined)."""
    text = names(block).replace("\\\n", " ").replace("./data", str(data))
    return [shlex.split(line, comments=True) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    return [part.strip() for part in body.split(";") if part.strip()]


def chronicle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chronicle.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


async def test_operations_postgresql_set_up_as_written(tmp_path: Path) -> None:
    section_text = section(OPERATIONS.read_text(), "## PostgreSQL set-up")
    (sql,) = fenced(section_text, "sql")
    (shell,) = fenced(section_text, "sh")
    names = PgNames()
    before, _, after = names(sql).partition(f"\\c {names.db}\n")
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        for statement in statements(before):  # as psql runs them: one at a time
            await admin.execute(statement)
        in_db = await asyncpg.connect(urlunsplit(urlsplit(ADMIN_URL)._replace(
            path="/" + names.db)))
        try:
            for statement in statements(after):
                await in_db.execute(statement)
        finally:
            await in_db.close()
        await _run_set_up(tmp_path, names, shell)
        await _run_backup_and_restore(tmp_path, names)
    finally:
        for db in (names.db, names.restored):
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        for role in (names.owner, names.app):
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def _run_set_up(tmp_path: Path, names: PgNames, shell: str) -> None:
    data = tmp_path / "data"
    steps = commands(shell, names, data)
    assert [s[:2] for s in steps] == [["chronicle", "init"], ["chronicle", "config"],
                                      ["chronicle", "serve"], ["chronicle", "migrate"]]
    init, config_set, serve, migrate = steps
    for step in (init, config_set):
        done = await asyncio.to_thread(chronicle, *step[1:])
        assert done.returncode == 0, (step, done.stderr)
    # The runtime role may change rows, never the schema.
    refused = await asyncio.to_thread(
        chronicle, "init", "--data-dir", str(tmp_path / "other"), "--database",
        names.url(names.app, names.db) + "?schema=elsewhere")
    assert refused.returncode == 3
    assert refused.stderr.startswith("error: ") and "permission denied" in refused.stderr
    key = SigningKey.generate()
    added = await asyncio.to_thread(chronicle, "client", "add", "--data-dir", str(data),
                                    "--public-key", key.public_b64, "--json")
    assert added.returncode == 0, added.stderr
    client_id = json.loads(added.stdout)["client-id"]
    sp = ServerProcess(data, *serve[4:])
    url = await sp.start()
    try:
        public = DataDir(data).signing_key(DataDir(data).settings()).public
        async with aiohttp.ClientSession() as session:
            who = Identity("alice", key, client_id)
            for n in range(3):
                assert (await http_publish(session, url, public, who, f"pg {n}")).status == 200
    finally:
        await stop_process(sp, graceful=True)
    upgraded = await asyncio.to_thread(chronicle, *migrate[1:], "--json")
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(upgraded.stdout)["upgraded"] is False


async def _run_backup_and_restore(tmp_path: Path, names: PgNames) -> None:
    block = section(OPERATIONS.read_text(), "## Backup and restore")
    (shell,) = [b for b in fenced(block, "sh") if "pg_dump" in b]
    for step in commands(shell, names, tmp_path):
        step = [str(tmp_path / s) if s == "chronicle.dump" else s for s in step]
        done = await asyncio.to_thread(subprocess.run, step, capture_output=True, text=True,
                                       timeout=120, check=False)
        assert done.returncode == 0, (step, done.stderr)
    data = tmp_path / "data"
    done = await asyncio.to_thread(chronicle, "config", "set", "--data-dir", str(data),
                                   "database", names.url(names.app, names.restored))
    assert done.returncode == 0, done.stderr
    sp = ServerProcess(data)
    url = await sp.start()
    try:
        public = DataDir(data).signing_key(DataDir(data).settings()).public
        async with aiohttp.ClientSession() as session:
            rows = (await http_request(session, url, public, "GET", "/chronicle/export")).json
        contents = [row["contents"] for row in rows["results"]]
        assert contents[-3:] == ["pg 0", "pg 1", "pg 2"]
        verify_chain(rows["results"])
        # The runtime role can write to the restored database: grants came along.
        added = await asyncio.to_thread(chronicle, "client", "add", "--data-dir", str(data),
                                        "--public-key", SigningKey.generate().public_b64)
        assert added.returncode == 0, added.stderr
    finally:
        await stop_process(sp, graceful=True)
