"""Content addressing of the PVC staging (gpujob.backends.kubernetes.staging.to_pvc), as a property.

The transfer pod's commands (the same ``sh`` scripts, ``tar``, ``sha256sum``, ``ln``) run here by a
stand-in for ``pods/exec`` that maps ``/cache`` to a folder, as the emulator's kubelet does; the
end-to-end path through the emulator's exec WebSocket is in test_k8s_staging.py.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpujob.backends.kubernetes import podexec, staging


class LocalPod:
    def __init__(self, pvc: Path) -> None:
        self.pvc = pvc

    def run(self, cluster, pod, argv, *, stdin=None, on_stdout=None, on_sent=None, timeout_s=0):
        argv = [str(self.pvc) + a[len("/cache"):] if a == "/cache" or a.startswith("/cache/") else a for a in argv]
        data = b"".join(stdin) if stdin is not None else None
        r = subprocess.run(argv, input=data, capture_output=True)
        return podexec.Done(r.returncode, r.stdout, r.stderr)


CONTENTS = st.sampled_from([b"", b"a", b"b" * 600, b"c" * 1500, b"same", b"\0"])
NAMES = st.sampled_from(["a.wav", "b.wav", "sub/c.wav", "sub/deeper/d d.wav", "e.tsv"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.dictionaries(NAMES, CONTENTS, min_size=1), second=st.dictionaries(NAMES, CONTENTS, min_size=1))
def test_each_content_is_sent_once_and_every_staged_folder_is_exact(monkeypatch, first, second):
    with tempfile.TemporaryDirectory() as tmp:
        pvc = Path(tmp) / "pvc"
        pvc.mkdir()
        monkeypatch.setattr(podexec, "run", LocalPod(pvc).run)
        sent_before: set[str] = set()
        for version in (first, second, first):
            src = Path(tmp) / "src"
            if src.exists():
                subprocess.run(["rm", "-rf", str(src)], check=True)
            for rel, data in version.items():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                (src / rel).write_bytes(data)
            done = staging.to_pvc(None, "pod", src)
            shas = {hashlib.sha256(d).hexdigest() for d in version.values()}
            new = shas - sent_before
            assert done.sent_files == len(new)                                  # only contents never sent
            assert done.sent_bytes == sum(len(d) for d in {hashlib.sha256(d).hexdigest(): d
                                                           for d in version.values()}.values()
                                          if hashlib.sha256(d).hexdigest() in new)
            sent_before |= shas
            staged = Path(str(pvc) + done.where[len("/cache"):])
            got = {p.relative_to(staged).as_posix(): p.read_bytes() for p in staged.rglob("*") if p.is_file()}
            assert got == version                                               # exactly the folder
            assert not list((pvc / "gpujob-data").glob("incoming.*"))
