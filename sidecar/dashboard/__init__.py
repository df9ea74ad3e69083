"""The web dashboard (issue 16): overview, evidence health, decision drill-down, calibration and
Annex IV reports over the verified evidence log, served by the sidecar (``CERTUS_DASHBOARD_ADDRESS``)
or by ``certus-sidecar dashboard`` on an existing log. ``index.py`` keeps the incremental, verified
index; ``web.py`` the pages; ``charts.py`` the SVG charts; ``cli.py`` the command."""
