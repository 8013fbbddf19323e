"""The fleet alert console: one web service (``wearwatch console``) for the open alerts of every patient.

It follows Kafka (the compacted ``alerts.state`` the workers write, the accounts, preferences
and ended sessions), serves the nurses' page (``console/assets/``) and its JSON API
(``console/API.md``), and sends nurses' commands to ``alerts.commands`` for the worker that
owns the patient. It never imports faust: ``streams`` stays the only package that does.
"""

from __future__ import annotations

__all__: list[str] = []
