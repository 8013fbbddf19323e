"""detectors/ is pure: importing it pulls in no transport or storage client."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("faust", "aiokafka", "kafka", "paho", "influxdb_client", "mode")


def test_detectors_import_no_io_clients() -> None:
    code = (
        "import sys, detectors, detectors.monitor, detectors.models, detectors.quality\n"
        "m = detectors.PatientMonitor(); m.update('glucose', 0, 50.0); m.tick(10**7)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
