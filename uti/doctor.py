"""`uti doctor`: what works in this environment, and the exact fix for what does not.

Each check is a small function that returns a `Check`; nothing here raises. A check that the main job
(`uti tokenize` / `verify` / `train` on the built-in default config) cannot do without is `required`: when
it fails, `uti doctor` exits 1. The rest (a GPU, `ray job submit`, object storage, m4a decoding) are
optional capabilities that warn.

This module must work in a broken environment, so it imports nothing heavy at module level: every
third-party import happens inside a check, under a guard. It also never reaches the network on its
own: the AWS credential chain is resolved without the instance-metadata providers unless asked
(`--cloud-metadata`), and no credential value is ever printed.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

# The fix for anything in the pinned working set: reinstall against the tested constraints. Run from the
# repository root (where constraints.txt is); the README's two commands do exactly this.
REINSTALL = 'python3 -m pip install -e ".[dev]" -c constraints.txt'
BASE_REINSTALL = "python3 -m pip install -e . -c constraints.txt"
POINTER = "run `uti doctor` to see what is broken here and the fix"

OK, WARN, FAIL = "ok", "warn", "FAIL"
GIB = 1024 ** 3


@dataclass(frozen=True)
class Check:
    """One line of the report: `item` (what was checked), `status` (ok / warn / FAIL), `detail` (what was
    found), `fix` (the exact command or step; empty when ok) and whether the main job needs it."""

    item: str
    status: str
    detail: str
    fix: str = ""
    required: bool = True

    @property
    def broken(self) -> bool:
        return self.status == FAIL

    def line(self) -> str:
        text = f"{self.status:<4}  {self.item}: {self.detail}"
        return f"{text} -> fix: {self.fix}" if self.fix else text


@dataclass(frozen=True)
class DoctorOptions:
    path: str = "."
    cloud_metadata: bool = False
    min_free_gib: float = 1.0
    warn_free_gib: float = 10.0


@dataclass(frozen=True)
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.broken for c in self.checks)

    def broken(self) -> list[Check]:
        return [c for c in self.checks if c.broken]

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "checks": [asdict(c) for c in self.checks]}, indent=2)


def one_line(exc: BaseException) -> str:
    """`Type: first meaningful line`, short enough for a report line (a library-load error's first line is
    the path, the undefined symbol comes on the same line)."""
    text = " ".join(str(exc).split())
    cause = exc.__cause__ or exc.__context__
    if cause is not None:  # torchaudio's "Could not load this library: PATH" keeps the undefined symbol in its cause
        inner = " ".join(str(cause).split())
        if inner and inner not in text:
            text = f"{text} ({inner[-160:]})"
    return f"{type(exc).__name__}: {text[:400]}" if text else type(exc).__name__


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _import(module: str):
    """Import `module` freshly enough to see a failure (a hidden module in sys.modules raises here)."""
    return importlib.import_module(module)


def _base(version: str) -> str:
    """'2.11.0+cu130' -> '2.11.0': local build tags do not make a different release."""
    return version.split("+", 1)[0]


# -- the torch stack ---------------------------------------------------------------------------------

def check_python() -> Check:
    v = sys.version_info
    found = f"Python {v.major}.{v.minor}.{v.micro} ({sys.executable})"
    if v < (3, 11):
        return Check("python", FAIL, found, "use Python 3.11 or newer for the virtual environment")
    return Check("python", OK, found)


def check_torch_pair() -> Check:
    """torch and torchaudio must be the same release: a torchaudio of another patch release installs
    without complaint and then fails to load its compiled extension (an undefined symbol)."""
    item = "torch + torchaudio"
    torch_dist, audio_dist = _version("torch"), _version("torchaudio")
    pin = f"python3 -m pip install torch=={_base(torch_dist or '2.11.0')} torchaudio=={_base(torch_dist or '2.11.0')}"
    try:
        torch = _import("torch")
    except Exception as exc:  # noqa: BLE001 - any failure to load torch is the finding
        return Check(item, FAIL, f"torch {torch_dist or '(not installed)'} does not import: {one_line(exc)}",
                     BASE_REINSTALL)
    try:
        torchaudio = _import("torchaudio")
        ext = _import("torchaudio._extension")
    except Exception as exc:  # noqa: BLE001
        return Check(item, FAIL, f"torchaudio {audio_dist or '(not installed)'} does not load next to torch "
                     f"{torch.__version__}: {one_line(exc)}", pin)
    t, a = _base(str(torch.__version__)), _base(str(getattr(torchaudio, "__version__", audio_dist or "?")))
    if t != a:
        return Check(item, FAIL, f"torch {t} with torchaudio {a}: not a matched pair (its compiled extension is "
                     f"built against torch {a})", pin)
    if not getattr(ext, "_IS_TORCHAUDIO_EXT_AVAILABLE", False):
        return Check(item, FAIL, f"torchaudio {a} loaded without its compiled extension (libtorchaudio)", pin)
    return Check(item, OK, f"torch {torch.__version__} + torchaudio {torchaudio.__version__}, libtorchaudio loaded")


# Compiled extensions uti loads, as (distribution, module that holds the compiled part).
COMPILED = (
    ("numpy", "numpy._core._multiarray_umath"),
    ("pillow", "PIL._imaging"),
    ("soundfile", "soundfile"),  # loads libsndfile through cffi at import
    ("msgspec", "msgspec._core"),
    ("pyarrow", "pyarrow.lib"),
    ("tokenizers", "tokenizers"),
    ("safetensors", "safetensors._safetensors_rust"),
    ("pyyaml", "yaml"),
    ("ray", "ray._raylet"),
)


def check_compiled() -> list[Check]:
    """One line per compiled extension; a failure names the package and the version installed."""
    checks = []
    for dist, module in COMPILED:
        version = _version(dist)
        try:
            _import(module)
        except Exception as exc:  # noqa: BLE001
            checks.append(Check(f"{dist} (compiled)", FAIL,
                                f"{dist} {version or '(not installed)'}: `import {module}` failed: {one_line(exc)}",
                                f"python3 -m pip install --force-reinstall -c constraints.txt {dist}"))
        else:
            checks.append(Check(f"{dist} (compiled)", OK, f"{dist} {version} ({module})"))
    return checks


def check_dependencies() -> Check:
    """Every base requirement of the installed `uti` is present at a version its range allows (what
    `pip check` says, limited to ours)."""
    try:
        from packaging.requirements import Requirement
    except Exception as exc:  # noqa: BLE001
        return Check("dependencies", WARN, f"cannot read requirements ({one_line(exc)})", required=False)
    wanted = [Requirement(r) for r in (metadata.requires("uti") or []) if "extra ==" not in r]
    problems = []
    for req in wanted:
        have = _version(req.name)
        if have is None:
            problems.append(f"{req.name} missing")
        elif req.specifier and not req.specifier.contains(_base(have), prereleases=True):
            problems.append(f"{req.name} {have} (needs {req.specifier})")
    if problems:
        return Check("dependencies", FAIL, "; ".join(problems), BASE_REINSTALL)
    return Check("dependencies", OK, f"all {len(wanted)} base requirements of uti {_version('uti')} installed")


def constraints_file() -> Path | None:
    """constraints.txt of the source tree this uti runs from (an editable install or a checkout)."""
    candidate = Path(__file__).resolve().parent.parent / "constraints.txt"
    return candidate if candidate.is_file() else None


def check_tested_set() -> Check:
    """Installed versions against constraints.txt, the set the suite ran on: a difference is not an error
    by itself, but it is the first suspect when something breaks."""
    path = constraints_file()
    if path is None:
        return Check("tested set", OK, "no constraints.txt beside this install (installed from a wheel)",
                     required=False)
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    differ = []
    for name, pinned in pins.items():
        have = _version(name)
        if have is not None and have != pinned:
            differ.append(f"{name} {have} (tested {pinned})")
    if differ:
        shown = "; ".join(differ[:6]) + (f"; and {len(differ) - 6} more" if len(differ) > 6 else "")
        return Check("tested set", WARN, f"{len(differ)} installed versions differ from {path.name}: {shown}",
                     REINSTALL, required=False)
    return Check("tested set", OK, f"installed versions match {path.name} ({len(pins)} pins)", required=False)


# -- audio decoding ----------------------------------------------------------------------------------

def _decoder(name: str):
    """uti.audio_decode's entry for one decoder (it imports numpy, so only here, under the check's guard)."""
    from uti.audio_decode import decoders

    return next(d for d in decoders() if d.name == name)


def _loaded_decoder(name: str):
    """(the decoder's DecoderInfo, None) when it loads, else (None, why not): a check never raises."""
    try:
        info = _decoder(name)
    except Exception as exc:  # noqa: BLE001 - audio_decode itself may not import in a broken environment
        return None, one_line(exc)
    return (info, None) if info.available else (None, info.error)


def check_libsndfile() -> Check:
    """libsndfile decodes what the audio dataset adapters read: wav, flac, ogg (vorbis, opus), mp3."""
    info, error = _loaded_decoder("libsndfile")
    if info is None:
        return Check("libsndfile", FAIL, f"soundfile does not load: {error}",
                     "python3 -m pip install --force-reinstall -c constraints.txt soundfile")
    have = info.formats
    missing_core = [name for name in ("wav", "flac") if name not in have]
    detail = f"libsndfile {info.version} decodes {', '.join(have)}"
    if missing_core:
        return Check("libsndfile", FAIL, f"{detail}; missing {', '.join(missing_core)}",
                     "python3 -m pip install --force-reinstall -c constraints.txt soundfile  (its wheel bundles a "
                     "complete libsndfile)")
    lacking = [n for n in ("ogg", "mp3", "opus") if n not in have]
    if lacking:
        return Check("libsndfile", WARN, f"{detail}; cannot decode {', '.join(lacking)} (libsndfile < 1.1 or "
                     "built without them)", "python3 -m pip install -c constraints.txt 'soundfile>=0.12'",
                     required=False)
    return Check("libsndfile", OK, detail)


CONTAINER_FIX = "python3 -m pip install -c constraints.txt av  (its wheels bundle FFmpeg)"


def check_container_decoder() -> Check:
    """m4a (AAC), webm and other containers libsndfile does not open decode through FFmpeg (PyAV)."""
    item = "m4a/webm decoder"
    info, error = _loaded_decoder("ffmpeg")
    if info is None:
        return Check(item, WARN, f"PyAV (FFmpeg) does not load ({error}): m4a, aac and webm files are recorded as "
                     "per-sample errors; wav/flac/ogg/opus/mp3 are unaffected", CONTAINER_FIX, required=False)
    detail = f"{info.version} decodes {', '.join(info.formats) or 'none of m4a, aac, opus, webm, mp3, flac'}"
    lacking = [n for n in ("m4a", "aac", "webm") if n not in info.formats]
    if lacking:
        return Check(item, WARN, f"{detail}; cannot decode {', '.join(lacking)} (an FFmpeg build without them)",
                     "python3 -m pip install --force-reinstall -c constraints.txt av", required=False)
    return Check(item, OK, detail, required=False)


# -- codecs ------------------------------------------------------------------------------------------

CODEC_PACKAGES = (("encodec", "encodec"), ("snac", "snac"), ("transformers", "transformers"), ("diffusers", "diffusers"))


def check_codec_packages() -> list[Check]:
    checks = []
    for dist, module in CODEC_PACKAGES:
        try:
            _import(module)
        except Exception as exc:  # noqa: BLE001
            # A codec package that only fails because the torch stack does is fixed there, not by reinstalling it.
            fix = ("fix torch + torchaudio first (above)" if re.search(r"torch|libc10", str(exc))
                   else f"python3 -m pip install -c constraints.txt {dist}")
            checks.append(Check(dist, FAIL, f"{dist} {_version(dist) or '(not installed)'} does not import: "
                                f"{one_line(exc)}", fix))
        else:
            checks.append(Check(dist, OK, f"{dist} {_version(dist)}"))
    return checks


# -- devices -----------------------------------------------------------------------------------------

def check_cuda() -> Check:
    """What torch sees; no GPU is fine (everything runs on CPU), so this never fails."""
    try:
        torch = _import("torch")
    except Exception:  # noqa: BLE001 - reported by check_torch_pair
        return Check("CUDA", WARN, "torch does not import (see above)", required=False)
    build = torch.version.cuda
    if not build:
        return Check("CUDA", OK, "CPU-only torch build: codec actors and training run on CPU", required=False)
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as exc:  # noqa: BLE001 - a broken driver raises here
        return Check("CUDA", WARN, f"CUDA {build} build, but the driver did not answer: {one_line(exc)}",
                     "check `nvidia-smi`; a driver older than the CUDA build cannot run it", required=False)
    if count == 0:
        return Check("CUDA", OK, f"CUDA {build} build, no GPU visible (CUDA_VISIBLE_DEVICES="
                     f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): runs on CPU", required=False)
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    return Check("CUDA", OK, f"CUDA {build}, {count} GPU(s): {', '.join(names)}", required=False)


# -- Ray ---------------------------------------------------------------------------------------------

def check_ray() -> list[Check]:
    try:
        ray = _import("ray")
    except Exception as exc:  # noqa: BLE001
        return [Check("ray", FAIL, f"ray {_version('ray') or '(not installed)'} does not import: {one_line(exc)}",
                      BASE_REINSTALL)]
    checks = [Check("ray", OK, f"ray {ray.__version__} (local instances and `--address` joins)")]
    try:
        _import("ray.dashboard.optional_deps")
    except Exception as exc:  # noqa: BLE001
        checks.append(Check("ray[default]", WARN, f"not installed ({one_line(exc)}): no dashboard or job server, "
                            "so this node cannot be the head for `ray job submit`",
                            'python3 -m pip install -e ".[cluster]" -c constraints.txt', required=False))
    else:
        checks.append(Check("ray[default]", OK, "dashboard and job server available (`ray job submit`)",
                            required=False))
    return checks


# -- object storage ----------------------------------------------------------------------------------

def _redacted_url(url: str) -> str:
    """An endpoint URL without any user:password part."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def aws_credential_source(*, cloud_metadata: bool) -> str | None:
    """The name of the provider in the AWS chain that has credentials (`env`, `shared-credentials-file`,
    `assume-role`, ...), or None. The instance-metadata and container providers are network calls
    (169.254.169.254), so they are left out unless asked for. Only the method name leaves this function."""
    import botocore.session

    session = botocore.session.get_session()
    resolver = session.get_component("credential_provider")
    if not cloud_metadata:
        for name in ("iam-role", "container-role"):
            try:
                resolver.remove(name)
            except Exception:  # noqa: BLE001 - not in this botocore's chain
                pass
    creds = resolver.load_credentials()
    return getattr(creds, "method", "unknown") if creds is not None else None


def check_object_storage(*, cloud_metadata: bool) -> list[Check]:
    fix = 'python3 -m pip install -e ".[s3]" -c constraints.txt'
    missing = [name for name in ("s3fs", "gcsfs") if importlib.util.find_spec(name) is None]
    if missing:
        return [Check("s3 extra", WARN, f"{', '.join(missing)} not installed: s3:// and gs:// paths fail", fix,
                      required=False)]
    checks = []
    try:
        for name in ("s3fs", "gcsfs"):
            _import(name)
    except Exception as exc:  # noqa: BLE001
        return [Check("s3 extra", WARN, f"{name} does not import: {one_line(exc)}", fix, required=False)]
    checks.append(Check("s3 extra", OK, f"s3fs {_version('s3fs')}, gcsfs {_version('gcsfs')}", required=False))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    where = f"endpoint {_redacted_url(endpoint)}" if endpoint else "AWS endpoint"
    try:
        source = aws_credential_source(cloud_metadata=cloud_metadata)
    except Exception as exc:  # noqa: BLE001 - a malformed config file, say
        checks.append(Check("s3 credentials", WARN, f"the AWS credential chain failed: {one_line(exc)}",
                            "check ~/.aws/config and ~/.aws/credentials", required=False))
        return checks
    if source:
        checks.append(Check("s3 credentials", OK, f"found through the '{source}' provider ({where}; values not "
                            "shown)", required=False))
    else:
        skipped = "" if cloud_metadata else "; instance metadata not queried (`--cloud-metadata` asks it)"
        checks.append(Check("s3 credentials", WARN, f"none in the environment or ~/.aws ({where}){skipped}",
                            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE (public buckets need none)",
                            required=False))
    return checks


# -- disk --------------------------------------------------------------------------------------------

def check_free_space(path: str, *, min_free_gib: float, warn_free_gib: float) -> Check:
    item = f"free space in {path}"
    if "://" in path:
        return Check(item, OK, "an object-store URL: no local space needed", required=False)
    folder = Path(path).expanduser().resolve()
    while not folder.exists() and folder != folder.parent:  # a folder a job would create: its first existing parent
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free / GIB
    except OSError as exc:
        return Check(item, FAIL, f"cannot read {folder}: {one_line(exc)}", "point --path at a folder you can read")
    detail = f"{free:.1f} GiB free on the filesystem of {folder}"
    if free < min_free_gib:
        return Check(item, FAIL, f"{detail} (under {min_free_gib:g} GiB)", "free space or choose another --out")
    if free < warn_free_gib:
        return Check(item, WARN, f"{detail} (under {warn_free_gib:g} GiB: enough for the demo, not a dataset)",
                     "free space or choose another --out", required=False)
    return Check(item, OK, detail)


# -- the report --------------------------------------------------------------------------------------

def _guarded(func: Callable[[], Check | list[Check]], item: str) -> list[Check]:
    """A check that itself breaks is reported as that item's failure, never as a traceback."""
    try:
        out = func()
    except Exception as exc:  # noqa: BLE001
        return [Check(item, FAIL, f"the check itself failed: {one_line(exc)}", REINSTALL)]
    return out if isinstance(out, list) else [out]


def essential_checks() -> list[Check]:
    """What every `uti` job needs (fast: the imports the jobs would make anyway). The demo runs these
    first, so a broken install stops it with one line instead of failing in a Ray actor."""
    checks: list[Check] = []
    for func, item in ((check_python, "python"), (check_torch_pair, "torch + torchaudio"),
                       (check_ray, "ray"), (check_codec_packages, "codecs")):
        checks += _guarded(func, item)
    return [c for c in checks if c.required]


def run_doctor(options: DoctorOptions = DoctorOptions()) -> DoctorReport:
    steps: Iterable[tuple[Callable[[], Check | list[Check]], str]] = (
        (check_python, "python"),
        (check_torch_pair, "torch + torchaudio"),
        (check_compiled, "compiled extensions"),
        (check_dependencies, "dependencies"),
        (check_tested_set, "tested set"),
        (check_libsndfile, "libsndfile"),
        (check_container_decoder, "m4a/webm decoder"),
        (check_codec_packages, "codecs"),
        (check_cuda, "CUDA"),
        (check_ray, "ray"),
        (lambda: check_object_storage(cloud_metadata=options.cloud_metadata), "object storage"),
        (lambda: check_free_space(options.path, min_free_gib=options.min_free_gib,
                                  warn_free_gib=options.warn_free_gib), "free space"),
    )
    checks: list[Check] = []
    for func, item in steps:
        checks += _guarded(func, item)
    return DoctorReport(checks)


def format_report(report: DoctorReport) -> str:
    lines = [c.line() for c in report.checks]
    broken = report.broken()
    if broken:
        lines.append(f"{len(broken)} problem(s) the main job cannot run with: {', '.join(c.item for c in broken)}")
    else:
        warned = sum(c.status == WARN for c in report.checks)
        lines.append("everything the main job needs works here" + (f" ({warned} optional item(s) warned)" if warned else ""))
    return "\n".join(lines)


# -- pointing here from a failure elsewhere ----------------------------------------------------------

_LOAD_FAILURE = re.compile(r"Could not load this library|undefined symbol|cannot open shared object file|"
                           r"DLL load failed|No module named|cannot import name|dynamic module does not define")


def is_environment_failure(exc: BaseException | str) -> bool:
    """True for an error that comes from the installation, not from the user's data or flags: a module
    that is missing or does not import, a compiled library that does not load. Also recognises the text
    of such an error as Ray relays it from an actor that failed to start."""
    if isinstance(exc, ImportError):
        return True
    if isinstance(exc, BaseException):
        if isinstance(exc, OSError) and _raised_while_importing(exc):
            return True
        exc = str(exc)
    return bool(_LOAD_FAILURE.search(exc))


def _raised_while_importing(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return any("importlib._bootstrap" in f.filename or f.name == "_load_lib" for f in frames)


def doctor_hint(exc: BaseException | str) -> str:
    """'; run `uti doctor` ...' to append to a one-line error caused by the installation, else ''."""
    return f"; {POINTER}" if is_environment_failure(exc) else ""
