"""Build engine images with the docker CLI: a clean build context, proxies and an extra CA for the build only.

The context holds the rendered Dockerfile, requirements.txt, the engine's
entrypoint files and build-context/ (the extra CA bundle as ca.pem, possibly
empty, and local wheels). Only the Dockerfile's builder stage sees
build-context/ and the proxy variables; the final stage copies just the built
virtual environment, so neither the CA nor a proxy URL with credentials ends up
in the image or its history. HTTP(S)_PROXY / NO_PROXY are Docker's predefined
build arguments, which `docker history` does not show.

Docker's classic builder (the only one where buildx is not installed) keeps
each stage's layers as its build cache; the builder stage's last image,
untagged, used to be left dangling after every build whose builder changed
(about 10 GB of them after CI). It is that cache which makes a rebuild after an
entrypoint change take seconds rather than a full install (or compile) of the
engine, so it is kept, by name: after a build the builder stage gets the
tag inference-matrix/<engine>:<flavour>-builder (labelled
inference-matrix.stage=builder), and the builder it replaces is removed. A build
thus leaves no dangling image: the final image and one builder per engine and
flavour. `--force-rm` removes the containers of a failed step too.

Where disk matters more than rebuild time (CI builds images of several GB each),
`--prune-builder` (BENCH_PRUNE_BUILDER=1) removes the builder stage, and the
layers only it used, right after each build: the final image stays.

Two runners on one Docker host that need the same missing image (two matrices
started at once, or CI building images ahead of its tests) do not both build
it: each build holds a lock named after the image's tag (filelock, in the
host's temporary folder), and the runner that waited finds the image built.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from runner.errors import UserError
from runner.images import (
    IMAGE_REPOSITORY,
    ImageSpec,
    at_cuda,
    at_version,
    build_files,
    entrypoint_files,
    image_tag,
    render,
    requirements_text,
)

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


@dataclass
class BuildOptions:
    base_image: str | None = None  # default: the image.yaml's pinned base
    ca_bundle: Path | None = None  # extra CA certificates for pip/HTTPS inside the build
    wheels: Path | None = None  # folder of local wheels pip may take (e.g. a CPU torch)
    network: str | None = None  # docker build --network (host: reach a proxy on localhost)
    build_args: dict[str, str] = field(default_factory=dict)
    proxies_from_env: bool = True
    cuda: str | None = None  # gpu: torch's CUDA build where an image offers it (images.at_cuda); None: its own
    keep_builder: bool = True  # False: remove the builder stage after the build (disk over rebuild time)


def _context(spec: ImageSpec, options: BuildOptions, folder: Path) -> None:
    (folder / "Dockerfile").write_text(render(spec))
    (folder / "requirements.txt").write_text(requirements_text(spec))
    entry = folder / "entrypoints"
    entry.mkdir()
    for path in entrypoint_files(spec.engine):
        shutil.copy2(path, entry / path.name)
    extras = folder / "build-context"
    (extras / "wheels").mkdir(parents=True)
    (extras / "files").mkdir()
    for path in build_files(spec):
        shutil.copy2(path, extras / "files" / path.name)
    (extras / "ca.pem").write_bytes(options.ca_bundle.read_bytes() if options.ca_bundle else b"")
    if options.wheels:
        for wheel in sorted(options.wheels.glob("*.whl")):
            target = extras / "wheels" / wheel.name
            try:
                os.link(wheel, target)
            except OSError:
                shutil.copy2(wheel, target)


def builder_tag(spec: ImageSpec) -> str:
    """The tag the builder stage keeps as the engine's build cache: one per engine and flavour."""
    return f"{IMAGE_REPOSITORY}/{spec.engine}:{spec.flavour}-builder"


def build_command(
    spec: ImageSpec, options: BuildOptions, tag: str, context: Path, target: str | None = None
) -> list[str]:
    """docker build of the image (or, with target, of that stage only: quietly, to tag it)."""
    command = ["docker", "build", "--force-rm", "--tag", tag, "--file", str(context / "Dockerfile")]
    if target:
        command += ["--target", target, "--quiet"]
    args = dict(options.build_args)
    if options.base_image:
        args["BASE_IMAGE"] = options.base_image
    if options.proxies_from_env:
        args.update({name: os.environ[name] for name in PROXY_VARIABLES if os.environ.get(name)})
    for name, value in args.items():
        command += ["--build-arg", f"{name}={value}"]
    if options.network:
        command += ["--network", options.network]
    return [*command, str(context)]


def validate(options: BuildOptions) -> None:
    if options.ca_bundle and not options.ca_bundle.is_file():
        raise UserError(
            f"--ca-bundle: {options.ca_bundle} is not a file; "
            "give a PEM bundle such as /etc/ssl/certs/ca-certificates.crt"
        )
    if options.wheels and not options.wheels.is_dir():
        raise UserError(f"--wheels: {options.wheels} is not a folder of .whl files")
    if shutil.which("docker") is None:
        raise UserError("docker CLI not found; install Docker (apt-get install docker.io) to build images")


def build_image(spec: ImageSpec, options: BuildOptions, log=print) -> str:
    """Build the image (its tag says what went in) and return the tag; raises UserError if the build fails."""
    validate(options)
    tag = image_tag(spec, options.base_image, options.build_args)
    with tempfile.TemporaryDirectory(prefix=f"image-{spec.engine}-") as scratch:
        context = Path(scratch)
        _context(spec, options, context)
        command = build_command(spec, options, tag, context)
        shown = [
            a if not any(a.startswith(f"{p}=") for p in PROXY_VARIABLES) else a.split("=", 1)[0] + "=…" for a in command
        ]
        log(f"building {tag}: {' '.join(shown)}")
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=sys.stdout, stderr=sys.stderr)
        if done.returncode == 0:
            settle_builder(spec, options, context, log)
    if done.returncode != 0:
        base = options.base_image or spec.base_image
        if not _local_image(base):
            raise UserError(
                f"images/{spec.engine}: docker build of {tag} failed: its base image {base} is not on this machine "
                "and could not be pulled (no registry reachable?); build on a local base (make base-image, then "
                "BENCH_BASE_IMAGE_CPU=inference-matrix/bookworm-base:local; README: 'Behind a proxy, or without a "
                "registry') or run with --executor local"
            )
        raise UserError(
            f"images/{spec.engine}: docker build of {tag} failed (exit {done.returncode}); see the build output above"
        )
    log(f"built {tag}")
    return tag


def _local_image(name: str) -> bool:
    done = subprocess.run(["docker", "image", "inspect", name], capture_output=True, stdin=subprocess.DEVNULL)
    return done.returncode == 0


def _inspect(name: str, field: str) -> str | None:
    command = ["docker", "image", "inspect", "--format", field, name]
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return done.stdout.strip() if done.returncode == 0 else None


def settle_builder(spec: ImageSpec, options: BuildOptions, context: Path, log=print) -> None:
    """Tag the builder stage just built (all of it from the cache the build left) as the engine's builder,
    and remove the builder that tag named before, once nothing else names it: no image is left dangling.
    Without options.keep_builder, the new builder goes too (with the layers only it used)."""
    name = builder_tag(spec)
    before = _inspect(name, "{{.Id}}")
    command = build_command(spec, options, name, context, target="builder")
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:  # the image itself is built; only its cache would stay untagged
        log(f"warning: could not tag the builder stage as {name}: {(done.stderr.strip().splitlines() or [''])[-1]}")
        return
    if before and before != _inspect(name, "{{.Id}}") and _inspect(before, "{{len .RepoTags}}") == "0":
        subprocess.run(["docker", "image", "rm", before], capture_output=True, stdin=subprocess.DEVNULL)
        log(f"removed the previous builder stage of {name} ({before.removeprefix('sha256:')[:12]})")
    if not options.keep_builder:
        done = subprocess.run(["docker", "image", "rm", name], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode == 0:
            log(f"removed the builder stage {name} (--prune-builder)")
        else:
            log(f"warning: could not remove the builder stage {name}: {(done.stderr.strip().splitlines() or [''])[-1]}")


def flavour_of(gpus: tuple[int, ...] | list[int]) -> str:
    return "gpu" if gpus else "cpu"


def ensure_images(
    needed: set[tuple[str, str]],
    specs: dict[tuple[str, str], ImageSpec],
    options_for: dict[str, BuildOptions],
    build_missing: bool,
    exists,
    log=print,
) -> dict[tuple[str, str], str]:
    """Tag of every image needed; build the missing ones, or refuse and name them.

    A key is (engine, flavour), or (engine, flavour, engine_version) for cells that name a release.
    An engine with no image of a flavour (a CUDA-only engine has no cpu one) gets no tag: its
    cells are reported as not run here (no_image_reason), and the rest of the run goes on.
    """
    wanted: dict[tuple, ImageSpec] = {}
    for key in sorted(needed, key=str):
        if key[:2] in specs:
            wanted[key] = image_spec(specs, key, options_for[key[1]].cuda)
    tags = {
        key: image_tag(spec, options_for[key[1]].base_image, options_for[key[1]].build_args)
        for key, spec in wanted.items()
    }
    missing = sorted((key for key, tag in tags.items() if not exists(tag)), key=str)
    if missing and not build_missing:
        names = ", ".join(
            f"{tags[k]} (make image-{k[0]} FLAVOUR={k[1]}{_version_arg(k)}{_cuda_arg(wanted[k], specs[k[:2]])})"
            for k in missing
        )
        raise UserError(f"missing images: {names}; build them or drop --no-build")
    for key in missing:
        with build_lock(tags[key], log):
            if exists(tags[key]):  # another runner built it while this one waited
                log(f"{tags[key]}: built meanwhile by another runner")
                continue
            build_image(wanted[key], options_for[key[1]], log=log)
    return tags


def build_lock_path(tag: str) -> Path:
    """The lock file of one image's build, shared by every runner of this host (BENCH_BUILD_LOCKS: elsewhere)."""
    folder = Path(os.environ.get("BENCH_BUILD_LOCKS") or Path(tempfile.gettempdir()) / "inference-matrix-builds")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (tag.replace("/", "_").replace(":", "_") + ".lock")


@contextmanager
def build_lock(tag: str, log=print) -> Iterator[None]:
    """Hold the build of tag; if another runner holds it, say so once and wait for it."""
    lock = FileLock(build_lock_path(tag))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"{tag}: another runner is building it; waiting for that build")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def no_image_reason(engine: str, flavour: str) -> str:
    """Why a cell of an engine with no image of its flavour is not run (images/<engine> lacks that flavour)."""
    other = "gpu" if flavour == "cpu" else "cpu"
    where = "on a GPU (gpus: [N])" if flavour == "cpu" else "on CPU (gpus: [])"
    return (
        f"images/{engine} has no {flavour} image (only {other}): run these cells {where}, "
        "or with --executor local where the engine is installed"
    )


def image_spec(specs: dict[tuple[str, str], ImageSpec], key: tuple, cuda: str | None = None) -> ImageSpec:
    """The image an (engine, flavour[, engine_version]) key names, on torch's CUDA `cuda` where it offers that."""
    return at_cuda(at_version(specs[key[:2]], key[2] if len(key) > 2 else None), cuda)


def _cuda_arg(spec: ImageSpec, described: ImageSpec) -> str:
    return f" CUDA={spec.cuda}" if spec.cuda != described.cuda else ""


def _version_arg(key: tuple) -> str:
    return f" VERSION={key[2]}" if len(key) > 2 else ""


def image_key(engine: str, gpus: tuple[int, ...] | list[int], engine_version: str | None) -> tuple:
    """The ensure_images / DockerExecutor key of a cell's image."""
    flavour = flavour_of(gpus)
    return (engine, flavour, engine_version) if engine_version else (engine, flavour)
