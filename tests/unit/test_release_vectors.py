"""The committed release and tree-digest vectors are exactly what their generators write."""

from __future__ import annotations

from pathlib import Path

from scripts import gen_release_vectors, gen_tree_digest_vectors

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def _same_files(generated: Path, committed: Path) -> None:
    names = sorted(p.name for p in generated.iterdir())
    assert names == sorted(p.name for p in committed.glob("*.json"))
    for name in names:
        assert (generated / name).read_bytes() == (committed / name).read_bytes(), name


def test_release_vectors_regenerate_without_diff(tmp_path: Path) -> None:
    assert gen_release_vectors.main(["--out", str(tmp_path)]) == 0
    _same_files(tmp_path, VECTORS / "release")


def test_tree_digest_vectors_regenerate_without_diff(tmp_path: Path) -> None:
    assert gen_tree_digest_vectors.main(["--out", str(tmp_path)]) == 0
    _same_files(tmp_path, VECTORS / "tree-digest")
