"""The trace catalog: every naming form gives the same trace, errors are one line, the synth cache is sound."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from moe_cache_env.traces import catalog, synth
from moe_cache_env.traces.catalog import (
    CACHE_ENV,
    TRACES_ENV,
    SynthSpec,
    bundled_root,
    cache_dir,
    cache_key,
    expand_suite,
    fingerprint,
    load_synthetic,
    parse_synth,
    resolve,
    resolve_path,
    synth_cache_path,
)
from moe_cache_env.traces.format import Trace, load_trace, save_trace

#: the cheapest preset to generate (its router model calibrates in about a second)
PRESET, TOKENS, SEED = "mixtral", 256, 3
SPEC = SynthSpec(PRESET, TOKENS, SEED)


def _same(a: Trace, b: Trace, *, same_name: bool = True) -> None:
    np.testing.assert_array_equal(a.experts, b.experts)
    np.testing.assert_array_equal(a.sequence, b.sequence)
    assert dict(a.meta) == dict(b.meta)
    assert (a.weights is None) == (b.weights is None)
    if same_name:  # a trace read with load_trace is named after its file
        assert a.name == b.name


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder of this test's own."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def reference() -> Trace:
    """The generator's own output for SPEC, called directly (not through the catalog)."""
    return synth.generate(PRESET, TOKENS, np.random.default_rng(SEED), seed=SEED)


@pytest.fixture
def generate_calls(monkeypatch) -> list[tuple]:
    """Counts the calls of the synthetic generator (which still runs)."""
    calls: list[tuple] = []
    real = synth.generate

    def counting(*args, **kwargs):
        calls.append(args[:2])
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "generate", counting)
    return calls


# ------------------------------------------------------------------------------------------- naming forms


def test_every_name_of_a_bundled_trace_resolves_to_the_same_trace():
    path = bundled_root() / "synthetic" / "mixtral.npz"
    expected = load_trace(path)
    names = [
        "synthetic/mixtral",
        "mixtral",
        "synthetic/mixtral.npz",
        "bundled://synthetic/mixtral",
        "bundled://mixtral",
        str(path),
        path,
        path.as_uri(),
    ]
    for name in names:
        assert resolve_path(name) == path, name
        _same(resolve(name), expected)


def test_both_synthetic_forms_give_the_generators_trace(cache, reference):
    legacy = resolve(f"synth:{PRESET}:{TOKENS}:{SEED}")
    uri = resolve(f"synth://{PRESET}?tokens={TOKENS}&seed={SEED}")
    reordered = resolve(f"synth://{PRESET}?seed={SEED}&tokens={TOKENS}")
    for trace in (legacy, uri, reordered):
        _same(trace, reference)
        assert trace.path is None  # as generate() returns it, so its name is the generator's too
    assert parse_synth(SPEC.uri) == SPEC == parse_synth(f"synth:{PRESET}:{TOKENS}:{SEED}")
    assert SPEC.uri == "synth://mixtral?tokens=256&seed=3"


def test_resolve_path_of_a_synthetic_name_is_its_valid_cache_file(cache, reference):
    path = resolve_path(SPEC.uri)
    assert path.is_relative_to(cache) and path.suffix == ".npz"
    _same(load_trace(path), reference, same_name=False)


def test_a_user_folder_is_searched_by_name_and_uri(tmp_path, monkeypatch):
    trace = load_trace(bundled_root() / "synthetic" / "mixtral.npz")
    save_trace(trace, tmp_path / "mine" / "x.npz")
    monkeypatch.setenv(TRACES_ENV, str(tmp_path))
    for name in ("mine/x", "x", "bundled://mine/x", "bundled://x"):
        assert resolve_path(name) == tmp_path / "mine" / "x.npz"


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "name, error, fragment",
    [
        ("no-such-trace", FileNotFoundError, "no trace file or bundled trace named 'no-such-trace'"),
        ("bundled://no/such", FileNotFoundError, "learned/tiny-olmoe-12L-64E-decode"),
        ("file:///no/such/file.npz", FileNotFoundError, "/no/such/file.npz"),
        ("", ValueError, "must not be empty"),
        ("ftp://host/x.npz", ValueError, "unknown scheme 'ftp://'"),
        ("bundled://../etc", ValueError, "may not contain '..'"),
        ("bundled://learned", ValueError, "is a folder of 2 trace file(s)"),
        ("synth:mixtral:256", ValueError, "must look like synth:PRESET:TOKENS:SEED"),
        ("synth:mixtral:many:0", ValueError, "TOKENS and SEED must be integers"),
        ("synth:mixtral:63:0", ValueError, "TOKENS must be in [64, 4194304], got 63"),
        ("synth:mixtral:256:-1", ValueError, "SEED must be a non-negative integer"),
        ("synth:gpt-5:256:0", ValueError, "unknown preset 'gpt-5'; presets: deepseek-v2-lite, mixtral"),
        ("synth://mixtral?tokens=256", ValueError, "lacks seed"),
        ("synth://mixtral?seed=1", ValueError, "lacks tokens"),
        ("synth://mixtral?tokens=256&seed=0&phase=decode", ValueError, "unknown key(s) ['phase']"),
        ("synth://mixtral?tokens=256&tokens=512&seed=0", ValueError, "must look like synth://PRESET"),
        ("synth://mixtral/x?tokens=256&seed=0", ValueError, "must look like synth://PRESET"),
        ("synth://mixtral?tokens=2.5e3&seed=0", ValueError, "must be integers"),
        ("synth://mixtral?tokens=1e9&seed=0", ValueError, "must be integers"),
        ("synth://mixtral?tokens=999999999&seed=0", ValueError, "TOKENS must be in"),
    ],
)
def test_bad_names_fail_in_one_line_naming_the_problem(name, error, fragment):
    with pytest.raises(error) as excinfo:
        resolve(name)
    message = str(excinfo.value)
    assert fragment in message
    assert "\n" not in message


def test_not_found_lists_what_exists(monkeypatch):
    monkeypatch.delenv(TRACES_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as excinfo:
        resolve("qwen")
    message = str(excinfo.value)
    for name in ("synthetic/qwen1.5-moe", "synthetic/mixtral", "learned/tiny-olmoe-12L-64E-prefill"):
        assert name in message
    presets = "deepseek-v2-lite, mixtral, olmoe, qwen1.5-moe"
    assert f"synth://PRESET?tokens=N&seed=S with PRESET one of {presets}" in message
    assert f"${TRACES_ENV}" in message


def test_a_bad_file_is_a_format_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="not a .npz"):
        resolve(str(bad))


# --------------------------------------------------------------------------------------------- the cache


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "moe-cache-env"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored: the XDG rules want an absolute path
    assert cache_dir() == tmp_path / "home" / ".cache" / "moe-cache-env"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "moe-cache-env"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"
    assert synth_cache_path(SPEC).parent.parent == tmp_path / "own" / "synth"


def test_the_key_separates_every_input(monkeypatch):
    specs = (SPEC, SynthSpec("olmoe", TOKENS, SEED), SynthSpec(PRESET, 512, SEED), SynthSpec(PRESET, TOKENS, 4))
    keys = {cache_key(spec) for spec in specs}
    assert len(keys) == 4
    assert cache_key(SPEC) == cache_key(SynthSpec(PRESET, TOKENS, SEED))
    before = cache_key(SPEC)
    monkeypatch.setattr(catalog, "generator_fingerprint", lambda: "another generator")
    assert cache_key(SPEC) != before


def test_the_fingerprint_covers_file_bytes_and_versions(tmp_path):
    source = tmp_path / "synth.py"
    source.write_text("A = 1\n")
    first = fingerprint([source], ["numpy 2.0"])
    assert fingerprint([source], ["numpy 2.0"]) == first
    assert fingerprint([source], ["numpy 2.1"]) != first
    source.write_text("A = 2\n")
    assert fingerprint([source], ["numpy 2.0"]) != first
    for name in catalog.GENERATOR_FILES:  # the generator's real files exist, so its fingerprint reads them
        assert (Path(synth.__file__).parent / name).is_file()


def test_the_cache_is_reused_across_names(cache, reference, generate_calls):
    first = resolve(SPEC.uri)
    assert generate_calls == [(PRESET, TOKENS)]
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files == [synth_cache_path(SPEC)]
    assert synth_cache_path(SPEC).name == "mixtral-t256-s3.npz"
    again = resolve(f"synth:{PRESET}:{TOKENS}:{SEED}")
    assert generate_calls == [(PRESET, TOKENS)]  # read back, not generated
    _same(first, reference)
    _same(again, reference)


def test_a_new_process_reads_the_cache(cache, generate_calls):
    resolve(SPEC.uri)
    code = (
        "from moe_cache_env.traces import catalog, synth\n"
        "def fail(*a, **k): raise SystemExit('generated again')\n"
        "synth.generate = fail\n"
        f"print(catalog.resolve({SPEC.uri!r}).num_tokens)\n"
    )
    out = _fresh_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(TOKENS)]


def test_a_changed_generator_misses_the_old_entry(cache, reference, generate_calls, monkeypatch):
    resolve(SPEC.uri)
    old = synth_cache_path(SPEC)
    monkeypatch.setattr(catalog, "generator_fingerprint", lambda: "the generator after an edit")
    new = synth_cache_path(SPEC)
    assert new != old
    _same(resolve(SPEC.uri), reference)
    assert len(generate_calls) == 2
    assert new.is_file() and old.is_file()


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _other_spec(path: Path) -> None:
    # a valid trace of another spec under this key's name: readable, but not what the key promises
    other = synth.generate(PRESET, TOKENS, np.random.default_rng(SEED + 1), seed=SEED + 1)
    save_trace(other, path, compress=False)


def _bad_ids(path: Path) -> None:
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["experts"] = arrays["experts"].copy()
    arrays["experts"][0, 0, 0] = 10_000  # out of range for 8 experts; written with a valid CRC
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "damage",
    [
        _flip_middle_byte,
        _truncate,
        _other_spec,
        _bad_ids,
        lambda path: path.write_bytes(b""),
        lambda path: path.write_bytes(b"PK\x03\x04 garbage"),
    ],
    ids=["flipped-byte", "truncated", "other-spec", "bad-ids", "empty", "garbage"],
)
def test_a_damaged_cache_file_is_regenerated_not_trusted(cache, reference, generate_calls, damage):
    resolve(SPEC.uri)
    path = synth_cache_path(SPEC)
    damage(path)
    _same(resolve(SPEC.uri), reference)
    assert len(generate_calls) == 2 + (damage is _other_spec)
    _same(load_trace(path), reference, same_name=False)  # the file was rewritten whole
    resolve(SPEC.uri)
    assert len(generate_calls) == 2 + (damage is _other_spec)


def test_concurrent_writers_leave_one_valid_file(cache, reference, monkeypatch):
    barrier = threading.Barrier(4)

    def slow_generate(*args, **kwargs):
        barrier.wait(timeout=30)  # every thread has missed the cache before any writes
        return reference

    monkeypatch.setattr(synth, "generate", slow_generate)
    results: list[Trace] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(load_synthetic(SPEC))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(results) == 4
    assert [p for p in cache.rglob("*") if p.is_file()] == [synth_cache_path(SPEC)]  # no temporary left
    _same(load_trace(synth_cache_path(SPEC)), reference, same_name=False)


@pytest.mark.slow
def test_processes_filling_the_cache_at_once_agree(cache, reference):
    code = (
        "import hashlib, sys\nfrom moe_cache_env.traces import catalog\n"
        f"trace = catalog.resolve({SPEC.uri!r})\n"
        "print(hashlib.sha256(trace.experts.tobytes() + trace.sequence.tobytes()).hexdigest())\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    digests = {run.communicate(timeout=300)[0].strip() for run in runs}
    assert all(run.returncode == 0 for run in runs)
    assert digests == {hashlib.sha256(reference.experts.tobytes() + reference.sequence.tobytes()).hexdigest()}
    assert [p for p in cache.rglob("*") if p.is_file()] == [synth_cache_path(SPEC)]
    _same(load_trace(synth_cache_path(SPEC)), reference, same_name=False)


def test_an_unwritable_cache_still_resolves(tmp_path, monkeypatch, reference):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be made under a file")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match=re.escape(f"could not cache synthetic trace {SPEC.uri} in ")):
        _same(resolve(SPEC.uri), reference)
    with pytest.raises(ValueError) as excinfo:
        resolve_path(SPEC.uri)
    assert "is not writable" in str(excinfo.value) and "\n" not in str(excinfo.value)


# ------------------------------------------------------------------------------------------------ suites


def test_expand_suite_lists_folders_and_keeps_other_names(tmp_path):
    trace = load_trace(bundled_root() / "synthetic" / "mixtral.npz")
    save_trace(trace, tmp_path / "suite" / "b.npz")
    save_trace(trace, tmp_path / "suite" / "a.npz")
    save_trace(trace, tmp_path / "suite" / "deeper" / "c.npz")
    (tmp_path / "suite" / "notes.txt").write_text("not a trace")
    names = expand_suite([str(tmp_path / "suite"), "bundled://learned", "qwen1.5-moe", SPEC.uri])
    assert names == [
        str(tmp_path / "suite" / "a.npz"),
        str(tmp_path / "suite" / "b.npz"),
        str(tmp_path / "suite" / "deeper" / "c.npz"),
        "bundled://learned/tiny-olmoe-12L-64E-decode",
        "bundled://learned/tiny-olmoe-12L-64E-prefill",
        "qwen1.5-moe",
        SPEC.uri,
    ]
    assert resolve_path(names[3]) == bundled_root() / "learned" / "tiny-olmoe-12L-64E-decode.npz"


@pytest.mark.parametrize(
    "names, fragment",
    [
        ([], "non-empty list"),
        ("synthetic/mixtral", "non-empty list"),
        ([""], "non-empty string"),
        ([3], "non-empty string"),
        (["synth:mixtral:lots:0"], "TOKENS"),
        (["ftp://x"], "unknown scheme"),
    ],
)
def test_expand_suite_rejects_bad_entries(names, fragment):
    with pytest.raises(ValueError, match=None) as excinfo:
        expand_suite(names)
    assert fragment in str(excinfo.value)


def test_an_empty_folder_is_not_a_suite(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .npz trace file"):
        expand_suite([str(tmp_path / "empty")])


def test_the_catalog_imports_no_higher_layer():
    code = "import sys\nimport moe_cache_env.traces.catalog\nprint('\\n'.join(sorted(sys.modules)))"
    out = _fresh_python(code)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.split()
    for layer in ("moe_cache_env.sim", "moe_cache_env.envs", "moe_cache_env.agents", "moe_cache_env.cli"):
        assert not [m for m in loaded if m == layer or m.startswith(layer + ".")], layer


def test_the_short_names_of_the_learned_traces_resolve_to_their_files():
    root = bundled_root() / "learned"
    assert resolve_path("learned-decode") == root / "tiny-olmoe-12L-64E-decode.npz"
    assert resolve_path("bundled://learned-prefill") == root / "tiny-olmoe-12L-64E-prefill.npz"
