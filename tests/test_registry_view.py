"""What the serving side asks of the storage, counted on a real registry of tiny models: a
resolution lists a model's folder once and reads only the files it must; the ingress answers with
the very model its verification loaded; a typed reference is what requests are routed by."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from tests.test_serving import TINY, copy_version, tiny_registry
from timedistill.serving.registry_view import ModelRef, RegistryView
from timedistill.store.errors import ModelUnavailable, RegistryError
from timedistill.store.storage import Storage

LOOKS = ("exists", "is_dir", "listdir", "stat_files", "stat_tree")  # what a listing costs
VERSION_FILES = ("config.json", "metrics.json", "scaler.json", "student.pt")


class CountedStorage(Storage):
    """A Storage that records each listing or look (`looks`) and each file read (`reads`)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.looks: list[tuple[str, str]] = []
        self.reads: Counter[str] = Counter()

    def clear(self) -> None:
        self.looks.clear()
        self.reads.clear()

    def exists(self, rel: str) -> bool:
        self.looks.append(("exists", rel))
        return super().exists(rel)

    def is_dir(self, rel: str) -> bool:
        self.looks.append(("is_dir", rel))
        return super().is_dir(rel)

    def listdir(self, rel: str) -> list[str]:
        self.looks.append(("listdir", rel))
        return super().listdir(rel)

    def stat_files(self, rel: str):
        self.looks.append(("stat_files", rel))
        return super().stat_files(rel)

    def stat_tree(self, rel: str):
        self.looks.append(("stat_tree", rel))
        return super().stat_tree(rel)

    def read_bytes(self, rel: str) -> bytes:
        self.reads[rel] += 1
        return super().read_bytes(rel)


@pytest.fixture
def storage(tmp_path) -> CountedStorage:
    """TINY with v1 and v2 (LATEST v2), and other-4 with v1, counted from here on."""
    plain = tiny_registry(tmp_path)
    copy_version(plain, f"registry/{TINY}/v1", f"registry/{TINY}/v2")
    plain.write_bytes(f"registry/{TINY}/LATEST", b"v2\n")
    return CountedStorage(str(tmp_path))


def files_of(version: str, model: str = TINY) -> Counter[str]:
    return Counter(f"registry/{model}/{version}/{name}" for name in VERSION_FILES)


def test_a_resolution_lists_the_model_folder_once_and_reads_only_what_it_must(storage):
    view = RegistryView(storage, ttl=60)
    served = view.resolve(TINY, None)
    assert (served.ref.name, served.ref.version) == (TINY, "v2")
    assert storage.looks == [("stat_tree", f"registry/{TINY}")]
    assert storage.reads == Counter({f"registry/{TINY}/LATEST": 1}) + files_of("v2")

    storage.clear()  # within the reload interval: nothing at all
    assert view.resolve(TINY, None) == served and view.resolve(TINY, "v2") == served
    assert not storage.looks and not storage.reads

    storage.clear()  # another version by name: one listing, its files
    older = view.resolve(TINY, "v1")
    assert older.ref.version == "v1"
    assert storage.looks == [("stat_tree", f"registry/{TINY}")] and storage.reads == files_of("v1")

    storage.clear()  # a version that is not there: one listing, no read
    with pytest.raises(RegistryError, match="not registered"):
        view.resolve(TINY, "v9")
    assert storage.looks == [("stat_tree", f"registry/{TINY}")] and not storage.reads


def test_a_fallback_and_a_later_check_each_cost_one_listing(storage):
    weights = storage.read_bytes(f"registry/{TINY}/v2/student.pt")
    storage.write_bytes(f"registry/{TINY}/v2/student.pt", weights[: len(weights) // 2])
    storage.clear()
    view = RegistryView(storage, ttl=0.2)
    assert view.resolve(TINY, None).ref.version == "v1"  # v2 broken: the newest good one before it
    assert storage.looks == [("stat_tree", f"registry/{TINY}")]
    assert storage.reads == Counter({f"registry/{TINY}/LATEST": 1}) + files_of("v2") + files_of("v1")
    assert "does not load" in view.broken(TINY)["v2"]

    time.sleep(0.3)  # the interval passed, the files did not change: LATEST read again, nothing verified again
    storage.clear()
    assert view.resolve(TINY, None).ref.version == "v1"
    assert storage.looks == [("stat_tree", f"registry/{TINY}")]
    assert storage.reads == Counter({f"registry/{TINY}/LATEST": 1})

    storage.write_bytes(f"registry/{TINY}/v2/student.pt", weights)  # repaired: its files changed
    time.sleep(0.3)
    storage.clear()
    assert view.resolve(TINY, None).ref.version == "v2"
    assert storage.looks == [("stat_tree", f"registry/{TINY}")]
    assert storage.reads == Counter({f"registry/{TINY}/LATEST": 1}) + files_of("v2")


def test_listing_the_models_lists_each_folder_once(storage):
    view = RegistryView(storage, ttl=60)
    listing = view.models()
    assert {m.name: m.versions for m in listing.models} == {TINY: ["v1", "v2"], "other-4": ["v1"]}
    trees = Counter(rel for kind, rel in storage.looks if kind == "stat_tree")
    assert trees == Counter({f"registry/{TINY}": 1, "registry/other-4": 1})
    assert sum(1 for kind, _ in storage.looks if kind in ("listdir", "stat_files")) == 1  # registry/ itself


def test_the_ingress_answers_with_the_model_its_verification_loaded(storage):
    """RegistryView keeps what verification loaded; ResidentModels takes it at the version's first
    request and answers with it: the weights are read once, and no load starts in the background."""
    from timedistill.serving.app import ResidentModels

    view = RegistryView(storage, ttl=60, keep_models=2)
    handed = []

    def take(ref: ModelRef):
        handed.append(view.take_model(ref))
        return handed[-1]

    resident = ResidentModels(storage, 2, verified=take)
    served = view.resolve(TINY, None)

    async def requests() -> list:
        found = [resident.get(served.ref), resident.get(served.ref)]
        assert not resident.loading  # nothing loads again
        return found

    first, second = asyncio.run(requests())
    assert first is not None and first is handed[0] and second is first and len(handed) == 1
    assert storage.reads[f"registry/{TINY}/v2/student.pt"] == 1
    assert view.take_model(served.ref) is None  # handed over once


def test_only_the_most_recent_verified_models_are_kept(storage):
    view = RegistryView(storage, ttl=60, keep_models=1)
    first, second = view.resolve(TINY, "v1"), view.resolve(TINY, "v2")
    assert view.take_model(first.ref) is None and view.take_model(second.ref) is not None
    unkept = RegistryView(storage, ttl=60)  # keep_models=0: the bare server loads by reference
    assert unkept.take_model(unkept.resolve(TINY, None).ref) is None


def test_a_reference_is_one_string_for_ray_and_back():
    ref = ModelRef("etth1-96", "v12", "0123456789abcdef")
    assert ref.id == "etth1-96@v12#0123456789abcdef" and ModelRef.parse(ref.id) == ref
    assert str(ref) == "etth1-96@v12"


def test_a_replica_that_finds_the_files_changed_makes_the_view_verify_again(storage):
    """forget(ref) drops the verdict on those files alone: a verdict on newer files stays."""
    from timedistill.serving.registry_view import load_served

    view = RegistryView(storage, ttl=60)
    served = view.resolve(TINY, None)
    storage.write_bytes(f"registry/{TINY}/v2/student.pt", b"truncated")
    with pytest.raises(ModelUnavailable, match="changed since it was verified"):
        load_served(storage, served.ref)
    view.forget(ModelRef(TINY, "v2", "not-these-files"))
    assert view.resolve(TINY, None) == served  # another reference's failure: this verdict stays
    view.forget(served.ref)
    assert view.resolve(TINY, None).ref.version == "v1" and "does not load" in view.broken(TINY)["v2"]
