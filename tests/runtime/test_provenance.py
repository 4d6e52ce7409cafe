import subprocess

from qspos.runtime.provenance import git_commit, machine


def _git(root, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def test_commit_says_when_the_code_differs_from_it(tmp_path):
    assert git_commit(tmp_path) is None  # not a checkout
    (tmp_path / "qspos").mkdir()
    (tmp_path / "qspos" / "m.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("r\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "c")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "README.md").write_text("docs only\n")  # not code: the commit still says it all
    assert git_commit(tmp_path) == head
    (tmp_path / "qspos" / "m.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{head}+modified"


def test_machine_names_cpu_count_vector_extensions_and_torch(monkeypatch):
    m = machine()
    assert "logical CPUs" in m and "torch" in m
    monkeypatch.setattr("qspos.runtime.provenance.cpu_flags", lambda: ["avx2", "avx512f"])
    assert "(avx2, avx512f), " in machine()
