"""Every usage example of the READMEs runs as written, so a README that drifts from the code
fails CI.

A ``python`` or ``bash`` block of a README either runs or says why not. An HTML comment right
above a block (invisible on the rendered page) may say, one directive a line::

    <!-- example
    illustrative: CIFAR-100 is not on the CI machine     (the block is not run: a reason)
    setup: distill                                        (SETUPS[name] runs first)
    replace: "--epochs 30" "--epochs 1"                   (tiny sizes; "old" must occur)
    skip: torchrun (tests/integration/test_torchrun.py runs 2 processes)  (commands so starting)
    -->

Each block runs in its own scratch copy of the repository (``packages/``, ``tools/``,
``studies/``) with ``../shared`` beside it, one test per block. A Python block runs in a fresh interpreter; a bash block runs its
commands one by one (``cd`` moves the rest of the block; ``cmd ... --resume`` means the block's
last full ``cmd`` command with ``--resume`` added, the READMEs' shorthand).
A Python setup is the block's preamble; a bash block's setup runs before its commands.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READMES = [
    ROOT / "README.md",
    *sorted(ROOT.glob("packages/*/README.md")),
    ROOT / "studies/README.md",
]
BLOCK = re.compile(
    r"(?:<!--\s*example(?P<directives>(?:(?!-->).)*)-->[ \t]*\n)?"
    r"^```(?P<lang>[\w-]*)[ \t]*\n(?P<code>.*?)^```",
    re.S | re.M,
)
RUNNABLE = ("python", "bash")
TIMEOUT_S = 600

#: Stand-ins for what a fragment takes as given (a trained teacher, a loader): the smallest
#: real objects of the kind the README names.
SETUPS = {
    "distill": """
import timm, torch
import lab_common.distill  # registers cifar_*
torch.manual_seed(0)
teacher = timm.create_model("cifar_resnet8x4", num_classes=100)
student = timm.create_model("cifar_resnet8", num_classes=100)
optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
loader = [(x, y), (x.flip(-1), y)]
epochs = 2
""",
    "imagenet-batch": """
import torch
loader = [(torch.randn(2, 3, 224, 224), torch.randint(0, 100, (2,)))]
""",
    "analysis-inputs": """
import timm, torch
import lavit
from pathlib import Path
from PIL import Image
Path("runs/s").mkdir(parents=True, exist_ok=True)
torch.save(timm.create_model("lavit_small", num_classes=10).state_dict(), "runs/s/model.pth")
Image.fromarray((torch.rand(240, 320, 3) * 255).byte().numpy()).save("cat.png")
""",
    "lavit-weights": """
import timm, torch
import lavit
torch.save(timm.create_model("lavit_small", num_classes=100).state_dict(), "model_224.pth")
""",
}


@dataclass
class Example:
    """One fenced block of a README and what its comment says about running it."""

    readme: Path
    line: int
    lang: str
    code: str
    illustrative: str | None = None
    setup: str | None = None
    replace: list[tuple[str, str]] = field(default_factory=list)
    skip: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.readme.relative_to(ROOT)}:{self.line}"

    def text(self) -> str:
        """The block's code with the ``replace`` directives applied (each must apply)."""
        code = self.code
        for old, new in self.replace:
            assert old in code, f"{self.name}: 'replace: {old!r}' matches nothing in the block"
            code = code.replace(old, new)
        return code


def parse(readme: Path) -> list[Example]:
    """The ``python``/``bash`` blocks of ``readme`` with their directives."""
    text = readme.read_text()
    examples = []
    for m in BLOCK.finditer(text):
        if m["lang"] not in RUNNABLE:
            continue
        line = text.count("\n", 0, m.start("code"))
        ex = Example(readme, line, m["lang"], m["code"])
        for raw in (m["directives"] or "").strip().removeprefix(":").splitlines():
            if not raw.strip():
                continue
            key, sep, value = raw.strip().partition(":")
            value = value.strip()
            assert sep and value, f"{ex.name}: directive {raw.strip()!r} is not 'key: value'"
            if key == "illustrative":
                ex.illustrative = value
            elif key == "setup":
                assert value in SETUPS, (
                    f"{ex.name}: unknown setup {value!r} (one of {list(SETUPS)})"
                )
                ex.setup = value
            elif key == "replace":
                old, new = shlex.split(value)
                ex.replace.append((old, new))
            elif key == "skip":
                m = re.fullmatch(r'"([^"]+)"\s+(.+)|(\S+)\s+(.+)', value)
                assert m, f"{ex.name}: 'skip: {value}' is not 'skip: <command start> <reason>'"
                ex.skip[m[1] or m[3]] = m[2] or m[4]
            else:
                raise AssertionError(f"{ex.name}: unknown directive {key!r}")
        examples.append(ex)
    return examples


EXAMPLES = [ex for readme in READMES for ex in parse(readme)]


def scratch_repo(base: Path) -> Path:
    """A copy of the repository's ``packages/``, ``tools/``, ``studies/`` under ``base/repo``,
    with ``base/shared`` the shared folder (so ``../shared/datasets`` resolves as in a checkout)."""
    repo = base / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    for part in ("packages", "tools", "studies"):
        shutil.copytree(ROOT / part, repo / part, ignore=ignore)
    (base / "shared").symlink_to(_shared_root())
    return repo


def _shared_root() -> Path:
    from lab_common import shared_datasets_root

    return shared_datasets_root().parent


def _env() -> dict[str, str]:
    """The test's environment with this interpreter's scripts first on ``PATH``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        pytest.fail(f"{what} exited {proc.returncode} in {cwd}:\n{tail}")


def commands(code: str) -> list[list[str]]:
    """The block's command lines, continuation lines joined and comments dropped."""
    lines = code.replace("\\\n", " ").splitlines()
    return [args for line in lines if (args := shlex.split(line, comments=True))]


def _program(args: list[str]) -> list[str]:
    """The command's program: ``python -m module`` or the first word."""
    return args[:3] if args[:2] == ["python", "-m"] else args[:1]


def _expand(args: list[str], full: list[list[str]]) -> list[str]:
    """``cmd A ... B``: ``cmd``, the arguments of the block's last full ``cmd`` command, then
    ``A`` and ``B`` (later options win, as with argparse)."""
    if "..." not in args:
        return args
    cut, program = args.index("..."), _program(args)
    for earlier in reversed(full):
        if _program(earlier) == program:
            return [*earlier, *args[len(program) : cut], *args[cut + 1 :]]
    raise AssertionError(f"'{shlex.join(args)}': no earlier '{shlex.join(program)}' to expand")


def run_bash(ex: Example, repo: Path) -> None:
    env, cwd = _env(), repo
    if ex.setup:
        _run([sys.executable, "-c", SETUPS[ex.setup]], repo, env, f"{ex.name} (setup {ex.setup})")
    full: list[list[str]] = []
    for args in commands(ex.text()):
        while args and re.fullmatch(r"[A-Z_]+=\S*", args[0]):
            key, _, value = args.pop(0).partition("=")
            env[key] = value
        if any(shlex.join(args).startswith(prefix) for prefix in ex.skip):
            continue
        if args[0] == "cd":
            cwd = (cwd / args[1]).resolve()
            continue
        if "..." not in args:
            full.append(list(args))
        args = _expand(args, full)
        exe = sys.executable if args[0] == "python" else args[0]
        _run([exe, *args[1:]], cwd, env, f"{ex.name}: {shlex.join(args)}")


def run_python(ex: Example, repo: Path) -> None:
    script = repo / f"example_{ex.readme.parent.name}_{ex.line}.py"
    script.write_text(SETUPS.get(ex.setup or "", "") + "\n" + ex.text())
    _run([sys.executable, str(script)], repo, _env(), f"{ex.name} (python block)")


def test_every_block_runs_or_says_why_not():
    """Collection itself: every directive parses, and the set of examples is not empty."""
    assert len(EXAMPLES) > 20
    runnable = [ex for ex in EXAMPLES if not ex.illustrative]
    assert len(runnable) >= len(EXAMPLES) // 2, "most examples must run, not be illustrative"


@pytest.mark.parametrize(
    "ex", [ex for ex in EXAMPLES if not ex.illustrative], ids=lambda ex: ex.name
)
def test_readme_example_runs(ex: Example, tmp_path):
    """One block, in its own scratch repository (the illustrative ones are listed, not run)."""
    repo = scratch_repo(tmp_path)
    (run_python if ex.lang == "python" else run_bash)(ex, repo)
