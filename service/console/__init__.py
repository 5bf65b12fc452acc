"""The web console at `/console` (CONTRACT §7): server-rendered pages over the read-side queries.

routes.py     the URL table
auth.py       login, logout, and who is asking (the session behind a request)
sessions.py   signed session cookies and CSRF tokens (pure)
pages.py      one view per page, calling `queries`, `concurrency`, `jobs`, `stream`,
              `webhook_counts`, `insight`, `latency` and `timeline` (the API's reads)
filters.py    the agents list's query parameters (the API's filters)
charts.py     the PCU chart and the turn latency bars as SVG geometry (pure)
timeline.py   one agent's timeline (`service.timeline`) in words, its transcript (pure)
layout.py     the Jinja2 environment and the headers every page carries (CSP)
templates/    Jinja2 templates, autoescaped
static/       the stylesheet and the small script for the live parts; nothing from elsewhere
"""
