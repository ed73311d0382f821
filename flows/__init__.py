"""flows: the Prefect workflow layer around tmcore (cached stages, figures, deployments).

    python -m flows.differentiability [--quick]   the differentiability figures (`make figures`)
    python -m flows.validation                    the validation benchmark
    python -m flows.serve                         serve every deployment (`make serve`)

Modules: ``artifacts`` (the store), ``caching`` (cache keys), ``tasks`` (the stages),
``figures`` (rendering), ``problems`` (named boundary-value problems), ``parameters``
(the flows' parameter types and ranges), ``runners``
(threads or Dask), ``benchmarks`` (validation suites), ``differentiability``,
``validation`` and ``serve`` (flows and deployments). See docs/flows.md.
"""

import os as _os

# Telemetry off unless the user chose otherwise; Prefect reads these when imported.
_os.environ.setdefault("DO_NOT_TRACK", "1")
_os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
