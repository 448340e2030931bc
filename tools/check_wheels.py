"""Build each package's wheel and install it alone into a fresh environment, then run it.

Every method package must install with only its declared dependencies (plus lab-common)
and must not find any other method package. torch comes from a shared base environment
through a ``.pth`` file, so the check does not copy several GB of torch per package;
everything else the wheel needs (torchvision and timm included, where declared) is
installed by pip from its metadata. Packages that declare no vision stack (core
``lab-common``, ``gp-maml``) must install and run without timm or torchvision. Every wheel
and sdist carries the LICENSE file.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import venv
import zipfile
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


def fresh_env(path: Path, torch_base: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    venv.EnvBuilder(with_pip=True).create(path)
    purelib = subprocess.run(
        [_python(torch_base), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    site = subprocess.run(
        [_python(path), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "_torch_base.pth").write_text(purelib + "\n")
    return path


def check(import_name: str, wheel: Path, common_wheel: Path, env: Path) -> None:
    pip = [_python(env), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, str(common_wheel), str(wheel)], check=True)
    absent = [m for m in METHOD_PACKAGES.values() if m != import_name]
    if import_name in WITHOUT_VISION:
        absent += ["timm", "torchvision"]
    probe = f"import importlib.util as u; bad = [m for m in {absent!r} if u.find_spec(m)]; assert not bad, bad"
    subprocess.run([_python(env), "-c", probe], check=True)
    subprocess.run([_python(env), "-c", textwrap.dedent(SMOKE[import_name])], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--torch-base", type=Path, required=True, help="venv holding torch alone")
    parser.add_argument(
        "--work", type=Path, required=True, help="scratch folder for wheels and envs"
    )
    parser.add_argument("--only", nargs="*", help="import names to check (default: all)")
    args = parser.parse_args()
    wheels = build_wheels(args.work / "dist")
    names = args.only or ["lab_common", *METHOD_PACKAGES.values()]
    failures = 0
    for import_name in names:
        start = time.time()
        env = fresh_env(args.work / f"env-{import_name}", args.torch_base)
        try:
            check(import_name, wheels[import_name], wheels["lab_common"], env)
            status = "ok"
        except subprocess.CalledProcessError as err:
            failures += 1
            status = f"FAILED ({err})"
        print(f"wheel {import_name}: {status} in {time.time() - start:.0f}s", flush=True)
        shutil.rmtree(env, ignore_errors=True)
    print(f"wheels: {len(names) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
