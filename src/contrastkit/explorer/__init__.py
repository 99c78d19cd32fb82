"""``contrastkit serve``: a local web explorer over a run folder's files (no database).

- :mod:`contrastkit.explorer.state`: the run's files in memory (memory-mapped
  embeddings, per-item arrays for paging and filtering on the server, the
  cached 2-D map, neighbours, uploads embedded with the run's model);
- :mod:`contrastkit.explorer.loading`: labels.csv and audit.csv read into
  per-item arrays, and the 2-D map computed;
- :mod:`contrastkit.explorer.review`: seed label corrections, the review
  queue, re-spread, data problems.
- :mod:`contrastkit.explorer.app`: the Starlette app: routes and the guards
  (token cookie, Host check, same-origin JSON POSTs, size caps).
- ``static/``: the one page and its plain JavaScript modules, shipped as
  package data (no CDN).
"""
