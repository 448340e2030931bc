"""Build each package's wheel and install it alone into a fresh environment, then run it.

Every method package must install with only its declared dependencies (plus lab-common)
and must not find any other method package. torch comes through a ``.pth`` file from a
folder of links to torch and its own requirements (nothing else) in an environment that has
it, so the check installs no torch at all; everything else the wheel needs (torchvision and timm included, where declared) is
installed by pip from its metadata. Packages that declare no vision stack (core
``lab-common``, ``gp-maml``) must install and run without timm or torchvision. Every wheel
and sdist carries the LICENSE file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import venv
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from monorepo import PACKAGES, ROOT

METHOD_PACKAGES = {folder: name for folder, name in PACKAGES.items() if folder != "common"}
#: Import names that must not be installed alongside these packages (they declare neither).
WITHOUT_VISION = {"lab_common", "gp_maml"}

#: The smallest real use of each package, run in its fresh environment.
SMOKE = {
    "lab_common": """
        import torch, lab_common
        lab_common.seed_everything(0)
        m = lab_common.measure(lambda: torch.randn(64, 64) @ torch.randn(64, 64), warmup=1, repeats=3)
        print("lab_common", lab_common.__version__, f"{m.median_s * 1e6:.0f} us")
    """,
    "lavit": """
        import torch, timm, lavit
        model = timm.create_model("lavit_tiny", num_classes=10)
        print("lavit", lavit.__version__, tuple(model(torch.randn(1, 3, 224, 224)).shape))
    """,
    "clkd": """
        import torch, clkd
        loss = clkd.CLKDLoss()
        terms = loss(torch.randn(8, 10, requires_grad=True), torch.randn(8, 10), torch.randint(0, 10, (8,)))
        sum(terms.values()).backward()
        print("clkd", clkd.__version__, sorted(terms))
    """,
    "trg_kd": """
        import torch, trg_kd
        loss = trg_kd.TRGLoss(16, 32)
        s_tokens = torch.randn(8, 16, 16, requires_grad=True)  # (B, N, D_student)
        terms = loss(torch.randn(8, 10, requires_grad=True), torch.randn(8, 10), torch.randint(0, 10, (8,)),
                     student_features=s_tokens, teacher_features=torch.randn(8, 32, 4, 4))
        sum(terms.values()).backward()
        print("trg_kd", trg_kd.__version__, sorted(terms))
    """,
    "gp_maml": """
        import torch, gp_maml
        model = gp_maml.create_backbone("conv4-32", in_chans=1, num_classes=5, img_size=28)
        learner = gp_maml.create_learner("gp-maml", model)
        xs, ys = torch.rand(2, 5, 1, 28, 28), torch.arange(5).repeat(2, 1)
        xq, yq = torch.rand(2, 15, 1, 28, 28), torch.arange(5).repeat_interleave(3).repeat(2, 1)
        out = learner(xs, ys, xq, yq)
        out.loss.backward()
        print("gp_maml", gp_maml.__version__, tuple(out.logits.shape), float(out.accuracy))
    """,
}


def _python(env: Path) -> str:
    return str(env / "bin" / "python")


def build_wheels(out: Path) -> dict[str, Path]:
    """Build every package's wheel and sdist into ``out``; return the wheels by import name."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for folder in PACKAGES:
        cmd = [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out)]
        subprocess.run([*cmd, str(ROOT / "packages" / folder)], check=True, capture_output=True)
    wheels = {whl.name.split("-")[0]: whl for whl in out.glob("*.whl")}
    for artifact in [*out.glob("*.whl"), *out.glob("*.tar.gz")]:
        if not _has_license(artifact):
            raise RuntimeError(f"{artifact.name} does not contain the LICENSE file")
    return wheels


def _has_license(artifact: Path) -> bool:
    if artifact.suffix == ".whl":
        with zipfile.ZipFile(artifact) as whl:
            return any(n.endswith(".dist-info/licenses/LICENSE") for n in whl.namelist())
    with tarfile.open(artifact) as sdist:
        return any(n.count("/") == 1 and n.endswith("/LICENSE") for n in sdist.getnames())


#: Run in the source environment: the top-level entries of torch's distribution and of its
#: requirements, recursively (markers evaluated there), as JSON ``[site-packages, [names]]``.
_TORCH_CLOSURE = """
import importlib.metadata as md, json, sysconfig
from packaging.requirements import Requirement
seen, todo, names = set(), ["torch"], set()
while todo:
    dist = md.distribution(todo.pop())
    key = dist.metadata["Name"].lower().replace("_", "-")
    if key in seen:
        continue
    seen.add(key)
    names.update(f.parts[0] for f in dist.files or () if f.parts[0] != "..")
    for text in dist.requires or ():
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
print(json.dumps([sysconfig.get_paths()["purelib"], sorted(names)]))
"""


def torch_site(source_python: str, dest: Path) -> Path:
    """``dest`` filled with links to torch's distribution closure in ``source_python``'s env."""
    out = subprocess.run(
        [source_python, "-c", _TORCH_CLOSURE], check=True, capture_output=True, text=True
    ).stdout
    purelib, names = json.loads(out)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in names:
        target = Path(purelib, name)
        if target.exists() and name != "__pycache__" and target.suffix != ".pth":
            (dest / name).symlink_to(target, target_is_directory=target.is_dir())
    return dest


def fresh_env(path: Path, site: Path) -> Path:
    """A new venv that sees ``site`` (torch alone) through a ``.pth`` file."""
    if path.exists():
        shutil.rmtree(path)
    venv.EnvBuilder(with_pip=True).create(path)
    own = subprocess.run(
        [_python(path), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(own, "_torch_base.pth").write_text(f"{site}\n")
    return path


def check(import_name: str, wheel: Path, common_wheel: Path, env: Path) -> None:
    """Install ``wheel`` (with lab-common's) into ``env``, probe what is absent, run its smoke."""
    pip = [_python(env), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    absent = [m for m in METHOD_PACKAGES.values() if m != import_name]
    if import_name in WITHOUT_VISION:
        absent += ["timm", "torchvision"]
    probe = f"import importlib.util as u; bad = [m for m in {absent!r} if u.find_spec(m)]; assert not bad, bad"
    steps = [
        # no .pyc at install: each environment imports its package once, then is deleted
        [*pip, "--no-compile", str(common_wheel), str(wheel)],
        [_python(env), "-c", probe],
        [_python(env), "-c", textwrap.dedent(SMOKE[import_name])],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(proc.stdout, end="", flush=True)
        if proc.returncode:
            raise RuntimeError(
                f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}"
            )


def _check_one(import_name: str, wheels: dict[str, Path], work: Path, site: Path) -> str:
    start = time.time()
    env = fresh_env(work / f"env-{import_name}", site)
    try:
        check(import_name, wheels[import_name], wheels["lab_common"], env)
        status = "ok"
    except RuntimeError as err:
        status = f"FAILED ({err})"
    finally:
        shutil.rmtree(env, ignore_errors=True)
    return f"wheel {import_name}: {status} in {time.time() - start:.0f}s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--torch-from",
        required=True,
        help="python of an environment that has torch (its torch closure is linked, not copied)",
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="scratch folder for wheels and envs"
    )
    parser.add_argument("--only", nargs="*", help="import names to check (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="environments built at once")
    args = parser.parse_args()
    wheels = build_wheels(args.work / "dist")
    site = torch_site(args.torch_from, args.work / "torch-site")
    names = args.only or ["lab_common", *METHOD_PACKAGES.values()]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        lines = list(pool.map(lambda n: _check_one(n, wheels, args.work, site), names))
    failures = sum("FAILED" in line for line in lines)
    print("\n".join(lines))
    print(f"wheels: {len(names) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
