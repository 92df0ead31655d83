"""Engine images: one pinned Dockerfile per engine and flavour, rendered from a shared template.

images/<engine>/image.yaml says what an engine's image pins (base image, pip
requirements, build steps) for each flavour (gpu, and cpu where the engine has
a CPU build); images/templates/Dockerfile.j2 is the structure they share. The
rendered images/<engine>/Dockerfile[.cpu] files are committed so users can read
and build them by hand; `python -m runner images --check` (and a test) keeps
them equal to what the template renders.

An image's tag is a hash of everything that goes into it: the Dockerfile, the
requirements, the entrypoint files copied in and the base image. An unchanged
image is never rebuilt; a changed one always gets a new tag.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2
import yaml

from runner.cuda_compat import min_driver
from runner.engines import ENGINES
from runner.errors import UserError

REPO = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO / "images"
ENTRYPOINTS_DIR = REPO / "entrypoints"
SHARED_ENTRYPOINT_FILES = (
    "harness.py",
    "shared.py",
    "serving.py",
    "prompt.txt",
    "side_quantiser.py",
    "calibration.txt",
    "bandwidth.py",
)  # in every image
FLAVOURS = ("gpu", "cpu")
IMAGE_REPOSITORY = "inference-matrix"


@dataclass(frozen=True)
class ImageSpec:
    engine: str
    flavour: str
    description: str
    base_image: str
    requirements: tuple[str, ...]
    smoke_test: str
    apt_runtime: tuple[str, ...] = ()
    apt_build: tuple[str, ...] = ()
    pip_env: str = ""
    extra_index_url: str = ""
    venv_args: str = ""
    build_args: dict[str, str] = field(default_factory=dict)
    post_install: tuple[str, ...] = ()
    build_files: tuple[str, ...] = ()  # files of images/<engine>/ the build uses, at /build-context/files/
    env: dict[str, str] = field(default_factory=dict)  # ENV of the final image
    unverified_pins: str | None = None
    not_wired: str | None = None  # why no cell can use this image yet (its engine has no description)
    tool: str | None = None  # not an engine's: a tool run beside cells (executors' run_tool), and what for
    engine_package: str = ""  # the requirement an engine_version replaces (empty: versions not offered)
    # a second venv over the engine's, for a tool whose pins conflict with the engine's (a quantiser that
    # pins other versions of the engine's dependencies): {path, purpose, module (smoke-tested), requirements}
    side_venv: dict[str, Any] | None = None
    # gpu flavour: the CUDA it runs ("13.0"), what brings it, and whether the build checks torch's CUDA is it
    cuda: str = ""
    cuda_of: str = ""
    torch_cuda: bool = False
    # other CUDA builds of the same torch this flavour can take instead: CUDA -> the wheel index that has them
    cuda_variants: dict[str, str] = field(default_factory=dict)

    @property
    def min_driver(self) -> int | None:
        return min_driver(self.cuda) if self.cuda else None

    @property
    def dockerfile(self) -> Path:
        suffix = "" if self.flavour == "gpu" else f".{self.flavour}"
        return IMAGES_DIR / self.engine / f"Dockerfile{suffix}"


def load_specs(images_dir: Path = IMAGES_DIR) -> dict[tuple[str, str], ImageSpec]:
    """Every (engine, flavour) image described under images/."""
    specs: dict[tuple[str, str], ImageSpec] = {}
    for path in sorted(images_dir.glob("*/image.yaml")):
        raw = yaml.safe_load(path.read_text())
        engine = path.parent.name
        if not raw.get("tool"):  # a tool's image (a load generator) runs beside cells, not as one
            _check_wired(path, engine, raw.get("not_wired"))
        for flavour, body in raw["flavours"].items():
            if flavour not in FLAVOURS:
                raise UserError(f"{path}: flavours.{flavour}: unknown flavour; use one of {', '.join(FLAVOURS)}")
            specs[(engine, flavour)] = ImageSpec(
                engine=engine,
                flavour=flavour,
                description=raw["description"],
                smoke_test=raw["smoke_test"],
                unverified_pins=raw.get("unverified_pins"),
                not_wired=raw.get("not_wired"),
                tool=raw.get("tool"),
                base_image=body["base_image"],
                requirements=tuple(body["requirements"]),
                apt_runtime=tuple(body.get("apt_runtime", ())),
                apt_build=tuple(body.get("apt_build", ())),
                pip_env=body.get("pip_env", ""),
                extra_index_url=body.get("extra_index_url", ""),
                venv_args=f" {body['venv_args']}" if body.get("venv_args") else "",
                build_args={k: str(v) for k, v in body.get("build_args", {}).items()},
                post_install=tuple(body.get("post_install", ())),
                build_files=tuple(body.get("build_files", raw.get("build_files", ()))),
                env={k: str(v) for k, v in {**raw.get("env", {}), **body.get("env", {})}.items()},
                engine_package=body.get("engine_package", ""),
                side_venv=_side_venv(path, flavour, body.get("side_venv", raw.get("side_venv"))),
                **_cuda(path, flavour, body),
            )
    return specs


def _check_wired(path: Path, engine: str, not_wired: str | None) -> None:
    """An image folder names its engine (runner.engines) or says, in not_wired, that it has none yet."""
    if engine in ENGINES and not_wired:
        raise UserError(f"{path}: not_wired: {engine} has an engine description now; remove the key")
    if engine not in ENGINES and not not_wired:
        raise UserError(
            f"{path}: no engine named {engine!r} in runner/engines; add its description, or say why not in a "
            "'not_wired:' line"
        )


def _cuda(path: Path, flavour: str, body: dict[str, Any]) -> dict[str, Any]:
    """A gpu flavour's CUDA claim (cuda, cuda_of, torch_cuda), checked; the runner compares it with the driver."""
    if flavour != "gpu":
        return {}
    cuda, of = str(body.get("cuda", "")), str(body.get("cuda_of", ""))
    if not cuda or not of:
        raise UserError(
            f'{path}: flavours.gpu: needs cuda (the CUDA it runs, e.g. "13.0") and cuda_of (what brings it, '
            "e.g. \"torch 2.11.0's CUDA wheels\"): the runner checks the host's driver against them"
        )
    variants = {str(k): str(v) for k, v in (body.get("cuda_variants") or {}).items()}
    for key, value in [("cuda", cuda), *(("cuda_variants", variant) for variant in variants)]:
        try:
            min_driver(value)
        except ValueError as exc:
            raise UserError(f'{path}: flavours.gpu.{key}: {exc}; write major.minor, e.g. "12.8"') from None
    if variants and not body.get("torch_cuda"):
        raise UserError(
            f"{path}: flavours.gpu.cuda_variants: offered only where torch brings the CUDA (torch_cuda: true)"
        )
    return {"cuda": cuda, "cuda_of": of, "torch_cuda": bool(body.get("torch_cuda", False)), "cuda_variants": variants}


SIDE_VENV_KEYS = ("path", "purpose", "module", "requirements")


def _side_venv(path: Path, flavour: str, raw: dict[str, Any] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    missing = [k for k in SIDE_VENV_KEYS if k not in raw]
    if missing or not all("==" in r for r in raw.get("requirements", [])):
        raise UserError(
            f"{path}: side_venv ({flavour}): needs {', '.join(SIDE_VENV_KEYS)} with every requirement pinned "
            f"(name==version); missing {', '.join(missing) or 'a pin'}"
        )
    return {**raw, "requirements": tuple(raw["requirements"])}


def at_version(spec: ImageSpec, version: str | None) -> ImageSpec:
    """The image with its engine package at another release (None: as pinned); the tag follows."""
    if not version:
        return spec
    if not spec.engine_package:
        raise UserError(
            f"images/{spec.engine}/image.yaml: the {spec.flavour} flavour names no engine_package, so cells cannot "
            "pick an engine_version; drop engine_version or add engine_package to that flavour"
        )
    prefix = f"{spec.engine_package}=="
    requirements = tuple(f"{prefix}{version}" if r.startswith(prefix) else r for r in spec.requirements)
    return replace(spec, requirements=requirements, description=f"{spec.description}, {spec.engine_package} {version}")


def offers_cuda(spec: ImageSpec, cuda: str | None) -> bool:
    """Whether the image can be built for CUDA `cuda` (its own, or one of its cuda_variants)."""
    return not cuda or cuda == spec.cuda or cuda in spec.cuda_variants


def at_cuda(spec: ImageSpec, cuda: str | None) -> ImageSpec:
    """The GPU image built on torch's CUDA `cuda` wheels (None, or one it does not offer: as described); the
    torch pin gets the variant's local version (torch==2.11.0+cu128) and the wheel index that has it, so the
    labels, the build's CUDA check and the tag all follow."""
    if cuda not in spec.cuda_variants:
        return spec
    local = "cu" + cuda.replace(".", "")
    requirements = tuple(
        f"{r.split('+', 1)[0]}+{local}" if r.split("==", 1)[0] == "torch" and "==" in r else r
        for r in spec.requirements
    )
    return replace(
        spec,
        requirements=requirements,
        cuda=cuda,
        cuda_of=f"torch's CUDA {cuda} wheels ({local}) instead of {spec.cuda_of}",
        extra_index_url=spec.cuda_variants[cuda],
        description=f"{spec.description}, CUDA {cuda}",
    )


def pins_of(requirements: list[str]) -> dict[str, str]:
    """{distribution: version} of name==version lines, extras dropped (nvidia-cutlass-dsl[cu13] -> nvidia-cutlass-dsl),
    as importlib.metadata names them in the image's pin check."""
    pins = {}
    for line in requirements:
        name, version = line.split("==", 1)
        pins[name.split("[", 1)[0].strip()] = version
    return pins


def render(spec: ImageSpec) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(IMAGES_DIR / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    values: dict[str, Any] = dict(spec.__dict__)
    values["pip_env"] = f"{spec.pip_env} " if spec.pip_env else ""
    values["pins"] = pins_of(spec.requirements)
    values["min_driver"] = spec.min_driver
    if spec.side_venv:
        values["side_venv"] = {**spec.side_venv, "pins": pins_of(spec.side_venv["requirements"])}
    return environment.get_template("Dockerfile.j2").render(**values)


def requirements_text(spec: ImageSpec) -> str:
    return "".join(f"{line}\n" for line in spec.requirements)


def entrypoint_files(engine: str, folder: Path | None = None) -> list[Path]:
    """What of entrypoints/ (or folder) an engine's cells run: the shared files and the files its description
    names (an image folder with no engine description yet gets the shared files alone)."""
    own = ENGINES[engine].files if engine in ENGINES else ()
    return [(folder or ENTRYPOINTS_DIR) / name for name in (*SHARED_ENTRYPOINT_FILES, *own)]


def build_files(spec: ImageSpec) -> list[Path]:
    return [IMAGES_DIR / spec.engine / name for name in spec.build_files]


def image_tag(spec: ImageSpec, base_image: str | None = None, build_args: dict[str, str] | None = None) -> str:
    """The tag says what went in: the Dockerfile, the pins, the base, the files copied, and any build argument the
    image declares (image.yaml: build_args) given a value other than its default (FLASH_ATTN=none)."""
    digest = hashlib.sha256()
    digest.update(render(spec).encode())
    digest.update(requirements_text(spec).encode())
    digest.update((base_image or spec.base_image).encode())
    for name, value in sorted(declared_overrides(spec, build_args).items()):
        digest.update(f"{name}={value}".encode())
    for path in [*build_files(spec), *entrypoint_files(spec.engine)]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return f"{IMAGE_REPOSITORY}/{spec.engine}:{spec.flavour}-{digest.hexdigest()[:12]}"


def declared_overrides(spec: ImageSpec, build_args: dict[str, str] | None) -> dict[str, str]:
    """The build arguments given that the image declares, where they differ from its defaults."""
    return {k: v for k, v in (build_args or {}).items() if k in spec.build_args and v != spec.build_args[k]}


def stale_dockerfiles(specs: dict[tuple[str, str], ImageSpec]) -> list[Path]:
    """Committed Dockerfiles that differ from what the template renders."""
    return [s.dockerfile for s in specs.values() if not s.dockerfile.exists() or s.dockerfile.read_text() != render(s)]


def write_dockerfiles(specs: dict[tuple[str, str], ImageSpec]) -> list[Path]:
    written = []
    for spec in specs.values():
        text = render(spec)
        if not spec.dockerfile.exists() or spec.dockerfile.read_text() != text:
            spec.dockerfile.write_text(text)
            written.append(spec.dockerfile)
    return written
