"""The README runs as written: every ```sh/```bash/```shell and ```python block is executed.

Conventions (the README's first lines say the short form):
- Blocks of one `## ` section form a session: they run in README order in one fresh directory
  (holding a copy of `topologies/`), as root, with `hvsim` and the venv's `python` first on PATH.
  Each shell block is a new `bash -e -o pipefail` started in that directory; background jobs
  (`mosquitto ... &`, `hvsim host ... &`) live until the section's last block has run.
- Each section runs in a network namespace of its own (fresh loopback), so the README can use a
  broker's usual ports (1883, 8883, 18830) as a user would, without meeting the system's broker or
  another test run. Its processes are killed, loop devices it attached detached, in the end.
- A ```python block runs with the venv's python in the section directory; one that defines
  `test_` functions is a pytest file and runs under pytest there.
- A ```yaml block whose first line is `# file: PATH` is written to PATH (in order, so later
  blocks use it); any other ```yaml block must parse. ```text/```console blocks are not run.
- `<!-- readme-test: not run: REASON -->` on the line before a block: the block is not executed
  (it takes minutes or runs this suite itself); its commands are checked instead: scripts and paths
  exist, every `hvsim` subcommand exists and accepts each `--option` given.
- `<!-- readme-test: slow -->` before a block: it runs, marked `slow` (deselect with
  `-m "not slow"`).

Each block is one test, named after its README line (`README.md:412`). A block whose earlier
section blocks have not run in this process (pytest -k, or xdist sending them elsewhere) runs
them first, so any block can run alone. (Under `pytest -n 2` a section cut between two workers
is replayed on the second; `--dist loadgroup` with `xdist_group` would avoid that, but does not
group anything with pytest 9.2 and xdist 3.8 here.)
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
RUN_LANGS = {"sh", "bash", "shell", "python", "yaml"}
NOT_RUN_LANGS = {"text", "console", ""}
BLOCK_TIMEOUT = 240.0
_DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(?P<what>.*?)\s*-->")


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    line: int            # 1-based line of the opening fence
    lang: str
    text: str
    section: str         # the `## ` heading it is under
    directive: str       # text of a `<!-- readme-test: ... -->` on the line before, or ""

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"

    @property
    def not_run(self) -> bool:
        return self.directive.startswith("not run")


def parse_readme(text: str) -> list[Block]:
    """Every fenced block of README text, with its section and directive."""
    blocks: list[Block] = []
    section = "(top)"
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        m = re.match(r"^(`{3,})\s*([\w+-]*)", line)
        if m:
            fence, lang = m.group(1), m.group(2).lower()
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].startswith(fence):
                body.append(lines[i])
                i += 1
            prev = lines[start - 1] if start > 0 else ""
            d = _DIRECTIVE.search(prev)
            blocks.append(Block(start + 1, lang, "\n".join(body) + "\n", section,
                                d.group("what") if d else ""))
        i += 1
    return blocks


BLOCKS = parse_readme(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in BLOCKS if b.lang in RUN_LANGS]
SECTIONS: dict[str, list[Block]] = {}
for _b in RUNNABLE:
    SECTIONS.setdefault(_b.section, []).append(_b)


def _params() -> list[pytest.ParameterSet]:
    out = []
    for b in RUNNABLE:
        marks = [pytest.mark.slow] if b.directive == "slow" else []
        out.append(pytest.param(b, id=b.id, marks=marks))
    return out


# ---------------------------------------------------------------- one section's environment

_netns_ids = count()


@dataclass
class Section:
    """A section's directory and network namespace, and how far its blocks have run."""

    name: str
    dir: Path
    scripts: Path
    netns: str
    done: list[int] = field(default_factory=list)   # lines of the blocks run, in order
    failed: int | None = None                        # line of a block that failed

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTEST_", "HVSIM_", "VIRTUAL_ENV", "COV_"))}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
        env["PWD"] = str(self.dir)
        env.pop("PYTHONPATH", None)
        return env

    def run(self, argv: list[str], log: str,
            timeout: float = BLOCK_TIMEOUT) -> subprocess.CompletedProcess:
        """Run argv inside the section's netns and directory; kill it whole on a timeout.

        Output goes to files, not pipes: a background job the block leaves running keeps its
        stdout open, and the block is over when its shell exits, as in a terminal.
        """
        out_p, err_p = self.scripts / f"{log}.out", self.scripts / f"{log}.err"
        with out_p.open("wb") as out, err_p.open("wb") as err:
            proc = subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], cwd=self.dir,
                                    env=self.env(), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = -9
                err.write(f"\n[readme-test: killed after {timeout:.0f} s]".encode())
        return subprocess.CompletedProcess(argv, rc, out_p.read_bytes(), err_p.read_bytes())


def _netns_pids(name: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def _kill_all(name: str) -> None:
    """End every process left in the namespace: SIGTERM, then SIGKILL after 5 s."""
    pids = _netns_pids(name)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = _netns_pids(name)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _detach_loops(under: Path) -> None:
    """Detach the loop devices whose backing file lies under `under`."""
    r = subprocess.run(["losetup", "-l", "-J"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return
    for dev in json.loads(r.stdout).get("loopdevices", []):
        back = dev.get("back-file") or ""
        if back.startswith(str(under) + os.sep):
            subprocess.run(["losetup", "-d", dev["name"]], capture_output=True)


def _teardown(sec: Section) -> None:
    _kill_all(sec.netns)
    _detach_loops(sec.dir)
    subprocess.run(["ip", "netns", "del", sec.netns], capture_output=True)


@pytest.fixture(scope="module")
def sections(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Section]]:
    """Sections set up in this process, torn down after their last block (or at the end)."""
    live: dict[str, Section] = {}
    try:
        yield live
    finally:
        for sec in live.values():
            _teardown(sec)


def _open_section(name: str, live: dict[str, Section],
                  tmp_path_factory: pytest.TempPathFactory) -> Section:
    base = tmp_path_factory.mktemp("readme")
    work = base / "work"
    work.mkdir()
    shutil.copytree(ROOT / "topologies", work / "topologies")
    scripts = base / "blocks"
    scripts.mkdir()
    ns = f"hvsim-readme-{os.getpid()}-{next(_netns_ids)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True,
                   capture_output=True)
    sec = Section(name, work, scripts, ns)
    live[name] = sec
    return sec


def _show(r: subprocess.CompletedProcess) -> str:
    def tail(b: bytes) -> str:
        s = b.decode(errors="replace")
        return s if len(s) < 4000 else "...\n" + s[-4000:]
    return f"exit {r.returncode}\n--- stdout\n{tail(r.stdout)}\n--- stderr\n{tail(r.stderr)}"


def _execute(block: Block, sec: Section) -> None:
    """Run one block in its section; raise AssertionError naming the README line on failure."""
    where = f"{block.id} ({block.lang} block in section {block.section!r})"
    if block.lang == "yaml":
        first = block.text.splitlines()[0] if block.text.strip() else ""
        m = re.match(r"#\s*file:\s*(\S+)", first)
        try:
            yaml.safe_load(block.text)
        except yaml.YAMLError as e:
            raise AssertionError(f"{where}: not valid YAML: {e}") from None
        if m:
            dest = sec.dir / m.group(1)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(block.text, encoding="utf-8")
        return
    if block.lang == "python":
        if re.search(r"^(async )?def test_", block.text, re.M):
            script = sec.dir / f"test_readme_{block.line}.py"
            script.write_text(block.text, encoding="utf-8")
            argv = [str(VENV_BIN / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "-p", "no:xdist", script.name]
        else:
            script = sec.scripts / f"block_{block.line}.py"
            script.write_text(block.text, encoding="utf-8")
            argv = [str(VENV_BIN / "python"), str(script)]
    else:
        script = sec.scripts / f"block_{block.line}.sh"
        script.write_text(block.text, encoding="utf-8")
        argv = ["bash", "-e", "-o", "pipefail", str(script)]
    r = sec.run(argv, f"block_{block.line}")
    if r.returncode != 0:
        raise AssertionError(f"{where} failed as written:\n{block.text}\n{_show(r)}")


# ------------------------------------------------------------------------- the tests

@pytest.mark.parametrize("block", _params())
def test_readme_block_runs(block: Block, sections: dict[str, Section],
                           tmp_path_factory: pytest.TempPathFactory) -> None:
    """The block runs as written, after the blocks before it in its section."""
    if block.not_run:
        check_not_run_block(block)
        return
    sec = sections.get(block.section) or _open_section(block.section, sections,
                                                        tmp_path_factory)
    order = [b for b in SECTIONS[block.section] if not b.not_run]
    if sec.done and (sec.failed is not None or sec.done[-1] >= block.line):
        # a rerun, or an earlier block failed: start the section again from scratch
        _teardown(sec)
        del sections[block.section]
        sec = _open_section(block.section, sections, tmp_path_factory)
    for earlier in order:
        if earlier.line >= block.line:
            break
        if earlier.line in sec.done:
            continue
        try:
            _execute(earlier, sec)
        except AssertionError as e:
            sec.failed = earlier.line
            pytest.fail(f"{block.id}: an earlier block of its section failed first:\n{e}")
        sec.done.append(earlier.line)
    try:
        _execute(block, sec)
    except AssertionError:
        sec.failed = block.line
        raise
    finally:
        sec.done.append(block.line)
        if block.line == order[-1].line:
            _teardown(sec)
            del sections[block.section]


# ------------------------------------------------------------- blocks that are not run

_help_cache: dict[tuple[str, ...], str] = {}


def _hvsim_help(words: tuple[str, ...]) -> str:
    if words not in _help_cache:
        r = subprocess.run([str(VENV_BIN / "hvsim"), *words, "--help"], capture_output=True,
                           text=True, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
        _help_cache[words] = r.stdout if r.returncode == 0 else ""
    return _help_cache[words]


def _commands(text: str) -> Iterator[list[str]]:
    """The simple commands of a shell block (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        for part in re.split(r";|&&|\|\|?", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]                      # VAR=value prefixes
            if words and words[0] == "sudo":
                words = words[1:]
            if words:
                yield words


def check_not_run_block(block: Block) -> None:
    """A block too long to run is checked: its scripts exist, its hvsim commands parse."""
    reason = block.directive.removeprefix("not run").strip(" :—-")
    assert reason, f"{block.id}: say why the block is not run: <!-- readme-test: not run: WHY -->"
    assert block.lang in {"sh", "bash", "shell"}, f"{block.id}: only shell blocks can be not run"
    n = 0
    for words in _commands(block.text):
        n += 1
        if words[0] == "bash":
            assert (ROOT / words[1]).is_file(), f"{block.id}: no script {words[1]}"
        elif words[:3] == ["python", "-m", "pytest"]:
            for w in words[3:]:
                if not w.startswith("-"):
                    assert (ROOT / w).exists(), f"{block.id}: no {w} to test"
        elif words[0] == "hvsim":
            sub: tuple[str, ...] = ()
            for w in words[1:]:
                if w.startswith("-") or not _hvsim_help((*sub, w)):
                    break
                sub = (*sub, w)
            assert sub, f"{block.id}: `{' '.join(words)}`: no such hvsim command"
            text = _hvsim_help(sub)
            for w in words[1 + len(sub):]:
                if w.startswith("--"):
                    opt = w.split("=", 1)[0]
                    assert opt in text, f"{block.id}: `hvsim {' '.join(sub)}` has no {opt}"
        else:
            raise AssertionError(f"{block.id}: not run, so only `bash SCRIPT`, `python -m pytest`"
                                 f" and `hvsim` commands can be checked, not `{words[0]}`")
    assert n, f"{block.id}: empty block"


def test_first_lines_set_up_and_run_without_sudo() -> None:
    """The README opens with the two commands a new user runs, which need no sudo as root."""
    first = BLOCKS[0]
    assert first.lang in {"sh", "bash"} and first.not_run, (
        f"{first.id}: the first block is the setup+demo/setup+test pair, marked not run "
        "(the suite must not run itself)")
    cmds = [w for w in _commands(first.text)]
    assert cmds == [["bash", "scripts/demo.sh"], ["bash", "scripts/test.sh"]], cmds
    assert "sudo" not in first.text
    demo = (ROOT / "scripts/demo.sh").read_text()
    suite = (ROOT / "scripts/test.sh").read_text()
    assert "scripts/setup.sh" in demo and "hvsim demo" in demo
    assert "scripts/setup.sh" in suite and "pytest" in suite
    setup = (ROOT / "scripts/setup.sh").read_text()
    assert not re.search(r"^\s*sudo\b", setup, re.M), "setup.sh must work where sudo is absent"


def test_readme_convention_is_stated_and_blocks_are_tagged() -> None:
    """Every fence has a tag the test knows, and the top of the README says what is run."""
    unknown = [f"{b.id}: ```{b.lang}" for b in BLOCKS
               if b.lang not in RUN_LANGS | NOT_RUN_LANGS]
    assert not unknown, f"tag them sh/python/yaml (run) or text/console (not run): {unknown}"
    untagged = [b.id for b in BLOCKS if b.lang == ""]
    assert not untagged, f"untagged blocks (say text or console if they must not run): {untagged}"
    head = "\n".join(README.read_text(encoding="utf-8").splitlines()[:25])
    assert "tests/test_readme.py" in head
    for b in BLOCKS:
        if b.directive:
            assert b.directive == "slow" or b.not_run, f"{b.id}: unknown directive {b.directive!r}"


def test_parser_groups_blocks_by_section_and_reads_directives() -> None:
    """The extraction itself: lines, tags, sections and directives as the README has them."""
    text = ("# t\n\n```sh\nbash scripts/demo.sh\n```\n## A\n<!-- readme-test: slow -->\n"
            "```python\nprint(1)\n```\n### A.1\n````console\n```sh\n````\n"
            "## B\n```yaml\nx: 1\n```\n")
    got = [(b.line, b.lang, b.section, b.directive, b.text) for b in parse_readme(text)]
    assert got == [
        (3, "sh", "(top)", "", "bash scripts/demo.sh\n"),
        (8, "python", "A", "slow", "print(1)\n"),
        (12, "console", "A", "", "```sh\n"),
        (16, "yaml", "B", "", "x: 1\n"),
    ]


def _resolve(dotted: str) -> bool:
    """True if `a.b.c` is a module of ours or an attribute reached from one (a module needing
    an optional package, e.g. `bench._rel.atheris_run` and atheris, counts as there)."""
    import importlib
    import importlib.util

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            if importlib.util.find_spec(name) is None:
                continue
        except ModuleNotFoundError:
            continue
        if i == len(parts):
            return True
        obj = importlib.import_module(name)
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_every_module_path_the_readme_names_exists() -> None:
    """Dotted names (`netsim.wire.frame.from_scapy`, `from storage.lvm import VolumeGroup`) and
    file paths (`bench/_rel/fuzz.py`, `storage/sr/srtypes/`) in the prose resolve after the
    layout move, not only those in blocks that run."""
    text = README.read_text(encoding="utf-8")
    bad = []
    for m in re.finditer(r"from ((?:netsim|storage|bench)[\w.]*) import ([\w, ]+)", text):
        for name in m.group(2).split(","):
            if name.strip() and not _resolve(f"{m.group(1)}.{name.strip()}"):
                bad.append(f"from {m.group(1)} import {name.strip()}")
    for m in re.finditer(r"(?<![\w/.])((?:netsim|storage|bench)(?:\.\w+)+)", text):
        if not _resolve(m.group(1)):
            bad.append(m.group(1))
    for m in re.finditer(r"`((?:netsim|storage|bench|tests|topologies|scripts)/[^`\s<:]*)", text):
        path = m.group(1).rstrip("/")
        if not (ROOT / path).exists():
            bad.append(path)
    assert not bad, f"README names what does not exist: {sorted(set(bad))}"


def test_section_teardown_ends_background_jobs_and_detaches_loops(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """What a block leaves behind (jobs in the background, a broker on 1883 in its own netns,
    a loop device) is gone when its section ends."""
    live: dict[str, Section] = {}
    sec = _open_section("harness", live, tmp_path_factory)
    block = Block(1, "sh", "truncate -s 8M pv.img; losetup -f --show pv.img > loop.txt\n"
                  "sleep 300 &\nmosquitto -p 1883 > /dev/null 2>&1 &\n", "harness", "")
    _execute(block, sec)
    loop = (sec.dir / "loop.txt").read_text().strip()
    assert _netns_pids(sec.netns), "the background jobs run on after their block"
    _teardown(sec)
    assert not _netns_pids(sec.netns)
    assert sec.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                           text=True).stdout
    r = subprocess.run(["losetup", "-j", str(sec.dir / "pv.img")], capture_output=True,
                       text=True)
    assert loop not in r.stdout
