"""The project speaks of itself: no work-tracking numbers, work sessions, people or machine paths.

Code, comments, tests and docs explain the why in terms of the product. This test
greps every tracked text file (``git ls-files``) for:

* issue or ticket numbers: ``issue 6``, ``issues #3``, ``ticket 12``, ``(#21)``, ``fixes #4`` — not the
  FHIR word (``OperationOutcome.issue``, ``DetectedIssue``, ``"issue": [...]``) and not an upstream
  project's bug named with its repository (``faust-streaming/faust#74``), which is a citation;
* work sessions: ``session 5``, ``session-4``, ``sessions 4-5`` — not MQTT sessions, which have no number;
* people: "another engineer", "belongs to another";
* paths of one machine: ``/work/``, ``/root/``, ``/home/<user>``, ``/tmp/``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: this file names the patterns it looks for
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()

PATTERNS = {
    "issue number": re.compile(r"(?i)\b(?:issues?|tickets?)\s*#?\d+\b|\b(?:bugs?|fix(?:es|ed)?|closes)\s*#\d+"),
    "bare #number": re.compile(r"\(#\d+\)|(?i:\b(?:see|in|per|cf\.?)\s+#\d+\b)"),
    "work session": re.compile(r"(?i)\bsessions?[\s-]+\d+\b"),
    "person": re.compile(r"(?i)\b(?:another|other) engineer|belongs to another"),
    "machine path": re.compile(r"(?<![\w.~-])/(?:work|root|tmp)/|(?<![\w.~-])/home/\w"),
}
#: text files only (binary and generated data are skipped)
SUFFIXES = {".py", ".md", ".toml", ".cfg", ".ini", ".txt", ".yml", ".yaml", ".sh", ".json", ".csv", ".html",
            ".xml", ".properties", ".conf", ""}


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p and p != SELF]


def _hits(name: str, text: str) -> list[str]:
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for what, pattern in PATTERNS.items():
            m = pattern.search(line)
            if m:
                found.append(f"{name}:{lineno}: {what}: {m.group(0)!r} in {line.strip()[:100]!r}")
    return found


def test_patterns_catch_what_they_are_for() -> None:
    bad = ["see issue 6", "fixed in (#21)", "as in session 5", "bench/README, session-4", "another engineer owns",
           "read /work/shared/NOTES.md", "pip install --target /tmp/x", "closes #12", "/root/.cache", "see #21",
           "Issue #3 said", "sessions 4 and 5"]
    good = ["OperationOutcome.issue[0]", "detected_issue(ev)", "DetectedIssue", 'doc["issue"][0]', "MQTT session",
            "persistent MQTT v5 session", "cf. faust-streaming/faust#74", "color: #222", "the array item #3 of",
            "end_mqtt_session(settings)", "a session expiry of 0", "tempfile.mkdtemp()", "<tmp>/wearwatch-faust",
            "Faust's fixed 1,500 ms", "w-1 #1 unit_mismatch", "an issue per entry", "http://127.0.0.1:8086/api/v2"]
    assert [b for b in bad if not _hits("x.md", b)] == []
    assert [g for g in good if _hits("x.md", g)] == []


def test_no_references_to_issues_sessions_people_or_machine_paths() -> None:
    found: list[str] = []
    for name in _tracked():
        path = ROOT / name
        if path.suffix not in SUFFIXES or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found += _hits(name, text)
    assert not found, "\n".join(found)
