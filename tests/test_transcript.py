"""README's "What users see" is what the bot really posts: the script that writes it runs
the bot against the doubles, and its output must match the README's section."""

from __future__ import annotations

import os
import subprocess
import sys

from scripts.transcript import README, ROOT, readme_section, section


def test_readme_transcript_matches_a_fresh_run() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}
    run = subprocess.run(
        [sys.executable, "-m", "scripts.transcript"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    transcript = run.stdout
    # both threads, from the command to the last note
    assert "@ada: /veeam-sa create prod-backup" in transcript
    assert "✅ done — Assign roles" in transcript
    assert "veeam-sa-bot secret show prod-backup" in transcript
    assert "@ada presses [Renew prod-backup]" in transcript
    assert "The warning now reads: ✅ `prod-backup` was renewed by @ada" in transcript
    current = readme_section(README.read_text(encoding="utf-8"))
    assert current is not None, "README.md lost its transcript markers"
    assert current == section(transcript), (
        "README.md's 'What users see' is out of date: run `python -m scripts.transcript --write`"
    )
